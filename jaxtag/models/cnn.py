"""The paper's models (section 4): a conv trunk per long-term window, dense layers, and for
cnn_lstm an LSTM run with nn.scan along each track's windows.

Inputs are whole tracks, padded to a bucket length: mel [B, L, frames, n_mels] and present [B, L]
(False for padding windows). Outputs are per-window scores [B, L, n_tags]: sigmoid probabilities
(the paper) or logits when output_activation is "none".

Every model has two stages: `encode` (per window, independent: can run in chunks of windows in
bounded memory) and `decode` (across a track's windows: cheap). `__call__` chains them.
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


def activate(scores, output_activation: str):
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

    def setup(self):
        self.trunk = ConvTrunk(self.conv_channels)
        self.dense = [nn.Dense(size) for size in self.dense_sizes]
        self.out = nn.Dense(self.num_tags)

    def encode(self, mel):
        """Per-window features after the first dense layer: [B, L, dense_sizes[0]]."""
        b, l = mel.shape[:2]
        h = self.trunk(mel.reshape((b * l,) + mel.shape[2:]))
        return nn.relu(self.dense[0](h)).reshape(b, l, -1)

    def head(self, h):
        for layer in self.dense[1:]:
            h = nn.relu(layer(h))
        return activate(self.out(h), self.output_activation)

    def decode(self, features, present):
        del present  # windows are independent: padding cannot affect real windows
        return self.head(features)

    def __call__(self, mel, present):
        return self.decode(self.encode(mel), present)


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

    def setup(self):
        super().setup()
        scan = nn.scan(MaskedLSTMStep, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=1, out_axes=1)
        self.lstm = scan(self.lstm_size)

    def initial_state(self, batch: int, dtype):
        shape = (batch, self.lstm_size)
        if self.lstm_initial_state == "random":
            c0, h0 = jax.random.normal(self.make_rng("lstm_state"), (2,) + shape, dtype)
            return c0, h0
        if self.lstm_initial_state == "zeros":
            return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
        raise ValueError(f"lstm_initial_state must be 'random' or 'zeros', got {self.lstm_initial_state!r}")

    def decode(self, features, present):
        _, y = self.lstm(self.initial_state(features.shape[0], features.dtype), (features, present))
        return self.head(jnp.concatenate([features, y], axis=-1))
