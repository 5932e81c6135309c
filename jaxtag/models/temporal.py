"""Temporal models over a track's window features [B, L, D] with present [B, L] (False = padding).

Each returns context features [B, L, D'] that the head sees beside the window's own features.
Padding windows never change real windows' outputs.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MaskedLSTMStep(nn.Module):
    """One LSTM step over a batch; padding windows (present False) leave the carry unchanged."""
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry, inputs):
        x, present = inputs
        new_carry, y = nn.OptimizedLSTMCell(self.features, dtype=self.dtype, name="cell")(carry, x)
        carry = jax.tree.map(lambda new, old: jnp.where(present[:, None], new, old), new_carry, carry)
        return carry, y


class LSTM(nn.Module):
    """An LSTM run with nn.scan along the windows (paper 4.2). reverse=True runs from the end:
    trailing padding windows come first but leave the carry at its initial state."""
    features: int = 500
    initial_state: str = "random"   # the paper's random initial state, or "zeros"
    reverse: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, present):
        shape = (h.shape[0], self.features)
        if self.initial_state == "random":
            c0, h0 = jax.random.normal(self.make_rng("lstm_state"), (2,) + shape, h.dtype)
        elif self.initial_state == "zeros":
            c0 = h0 = jnp.zeros(shape, h.dtype)
        else:
            raise ValueError(f"lstm_initial_state must be 'random' or 'zeros', got {self.initial_state!r}")
        scan = nn.scan(MaskedLSTMStep, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=1, out_axes=1, reverse=self.reverse)
        _, y = scan(self.features, self.dtype, name="scan")((c0, h0), (h, present))
        return y


class BiLSTM(nn.Module):
    features: int = 500
    initial_state: str = "zeros"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, present):
        forward = LSTM(self.features, self.initial_state, dtype=self.dtype, name="forward")(h, present)
        backward = LSTM(self.features, self.initial_state, reverse=True, dtype=self.dtype, name="backward")(h, present)
        return jnp.concatenate([forward, backward], axis=-1)


class SelfAttention(nn.Module):
    """A pre-norm transformer encoder block over the windows: each window attends to the track's
    real windows (padding is masked out as keys), with learned position embeddings."""
    num_heads: int = 4
    max_windows: int = 4096
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, present):
        d, dt = h.shape[-1], self.dtype
        position = nn.Embed(self.max_windows, d, dtype=dt, name="position")(jnp.arange(h.shape[1]) % self.max_windows)
        x = h + position[None]
        mask = nn.make_attention_mask(jnp.ones_like(present), present)  # [B, 1, L, L]: keys must be real
        y = nn.MultiHeadDotProductAttention(self.num_heads, dtype=dt, name="attention")(
            nn.LayerNorm(dtype=dt, name="norm1")(x), mask=mask, deterministic=True)
        x = x + y
        y = nn.Dense(2 * d, dtype=dt, name="mlp_in")(nn.LayerNorm(dtype=dt, name="norm2")(x))
        return x + nn.Dense(d, dtype=dt, name="mlp_out")(nn.gelu(y))
