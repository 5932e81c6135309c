"""The paper's models (section 4): a conv trunk per long-term window, dense layers, and for
cnn_lstm an LSTM run with nn.scan along each track's windows.

Inputs are whole tracks, padded to a bucket length: mel [B, L, frames, n_mels] and present [B, L]
(False for padding windows). Outputs are per-window scores [B, L, n_tags]: sigmoid probabilities
(the paper) or logits when output_activation is "none".
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvTrunk(nn.Module):
    """3x3 convs (pad 1) with ReLU, two per block, a 2x2 max-pool after each block (paper 4.1):
    1 -> 20 -> 40, pool, 40 -> 80 -> 80, pool: 128x128 becomes 80x32x32."""
    channels: Sequence[int] = (20, 40, 80, 80)

    @nn.compact
    def __call__(self, x):  # x: [N, frames, n_mels]
        x = x[..., None]
        for i, c in enumerate(self.channels):
            x = nn.relu(nn.Conv(c, (3, 3), padding=1, name=f"conv{i}")(x))
            if i % 2 == 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return x.reshape(x.shape[0], -1)


def _activate(scores, output_activation: str):
    if output_activation == "sigmoid":
        return nn.sigmoid(scores)
    if output_activation == "none":
        return scores
    raise ValueError(f"output_activation must be 'sigmoid' or 'none', got {output_activation!r}")


class CNN(nn.Module):
    """Paper 4.1: conv trunk -> dense 1000, 800, 600 (ReLU) -> dense n_tags (sigmoid)."""
    num_tags: int
    conv_channels: Sequence[int] = (20, 40, 80, 80)
    dense_sizes: Sequence[int] = (1000, 800, 600)
    output_activation: str = "sigmoid"

    def window_features(self, mel):
        """Per-window features after the first dense layer: [B, L, dense_sizes[0]]."""
        b, l = mel.shape[:2]
        h = ConvTrunk(self.conv_channels, name="trunk")(mel.reshape((b * l,) + mel.shape[2:]))
        return nn.relu(nn.Dense(self.dense_sizes[0], name="dense0")(h)).reshape(b, l, -1)

    def head(self, h):
        for i, size in enumerate(self.dense_sizes[1:], start=1):
            h = nn.relu(nn.Dense(size, name=f"dense{i}")(h))
        return _activate(nn.Dense(self.num_tags, name="out")(h), self.output_activation)

    @nn.compact
    def __call__(self, mel, present):
        del present  # windows are independent: padding cannot affect real windows
        return self.head(self.window_features(mel))


class MaskedLSTMStep(nn.Module):
    """One LSTM step over a batch; padding windows (present False) leave the carry unchanged."""
    features: int

    @nn.compact
    def __call__(self, carry, inputs):
        x, present = inputs
        new_carry, y = nn.OptimizedLSTMCell(self.features, name="cell")(carry, x)
        carry = jax.tree.map(lambda new, old: jnp.where(present[:, None], new, old), new_carry, carry)
        return carry, y


class CNNLSTM(CNN):
    """Paper 4.2: the dense-1000 features of a track's windows feed an LSTM (500) scanned along the
    track; [dense-1000, LSTM output] (1500) feeds dense 800, 600 and the output layer."""
    lstm_size: int = 500
    lstm_initial_state: str = "random"   # the paper's random initial state, or "zeros"

    @nn.compact
    def __call__(self, mel, present):
        h = self.window_features(mel)
        b = h.shape[0]
        shape = (b, self.lstm_size)
        if self.lstm_initial_state == "random":
            c0, h0 = jax.random.normal(self.make_rng("lstm_state"), (2,) + shape, h.dtype)
        elif self.lstm_initial_state == "zeros":
            c0 = h0 = jnp.zeros(shape, h.dtype)
        else:
            raise ValueError(f"lstm_initial_state must be 'random' or 'zeros', got {self.lstm_initial_state!r}")
        scan = nn.scan(MaskedLSTMStep, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=1, out_axes=1)
        _, y = scan(self.lstm_size, name="lstm")((c0, h0), (h, present))
        return self.head(jnp.concatenate([h, y], axis=-1))
