"""Losses (paper 4.3, plus binary cross-entropy). Each maps scores [..., C], labels [..., C] to a
per-window loss [...]; a track's loss is the sum over its unmasked windows."""
from __future__ import annotations

import jax.numpy as jnp
import optax


def multilabel_margin_loss(scores, labels, pos_weight=None):
    """PyTorch's MultiLabelMarginLoss for binary label vectors.

    sum over positive j and negative i of max(0, 1 - (x_j - x_i)), divided by C.
    0 where a window has no positive or no negative tag.
    """
    del pos_weight
    scores = jnp.asarray(scores)
    pos = labels > 0.5
    # pair[..., j, i] = hinge for positive j against negative i.
    hinge = jnp.maximum(0.0, 1.0 - (scores[..., :, None] - scores[..., None, :]))
    pairs = pos[..., :, None] & ~pos[..., None, :]
    return jnp.sum(jnp.where(pairs, hinge, 0.0), axis=(-2, -1)) / scores.shape[-1]


def sigmoid_bce_loss(logits, labels, pos_weight=None):
    """Binary cross-entropy on logits (numerically stable), mean over the C tags. pos_weight [C]
    multiplies the positive term, to counter rare tags."""
    logits = jnp.asarray(logits)
    if pos_weight is None:
        per_tag = optax.sigmoid_binary_cross_entropy(logits, labels)
    else:
        log_p, log_not_p = -jnp.logaddexp(0.0, -logits), -jnp.logaddexp(0.0, logits)
        per_tag = -(pos_weight * labels * log_p + (1.0 - labels) * log_not_p)
    return jnp.mean(per_tag, axis=-1)


def track_loss(per_window, mask):
    """Sum of per-window losses [B, L] over each track's unmasked windows -> [B] (paper 4.3)."""
    return jnp.sum(jnp.where(mask, per_window, 0.0), axis=-1)


LOSSES = {"margin": multilabel_margin_loss, "bce": sigmoid_bce_loss}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]
