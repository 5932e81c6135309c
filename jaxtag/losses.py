"""Losses (paper 4.3)."""
from __future__ import annotations

import jax.numpy as jnp


def multilabel_margin_loss(scores, labels):
    """PyTorch's MultiLabelMarginLoss for binary label vectors.

    scores [..., C], labels [..., C] in {0, 1} -> loss [...]:
        sum over positive j and negative i of max(0, 1 - (x_j - x_i)), divided by C.
    0 where a window has no positive or no negative tag.
    """
    scores = jnp.asarray(scores)
    pos = labels > 0.5
    # pair[..., j, i] = hinge for positive j against negative i.
    hinge = jnp.maximum(0.0, 1.0 - (scores[..., :, None] - scores[..., None, :]))
    pairs = pos[..., :, None] & ~pos[..., None, :]
    return jnp.sum(jnp.where(pairs, hinge, 0.0), axis=(-2, -1)) / scores.shape[-1]


def track_loss(per_window, mask):
    """Sum of per-window losses [B, L] over each track's unmasked windows -> [B] (paper 4.3)."""
    return jnp.sum(jnp.where(mask, per_window, 0.0), axis=-1)


LOSSES = {"margin": multilabel_margin_loss}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]
