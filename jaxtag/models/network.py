"""A tagging network = input transform -> window trunk -> temporal model -> dense head.

Inputs are whole tracks, padded to a bucket length: mel [B, L, frames, n_mels] and present [B, L]
(False for padding windows). Outputs are per-window scores [B, L, n_tags]: sigmoid probabilities
(the paper) or logits when output_activation is "none" (losses on logits apply the sigmoid).

Two stages: `encode` (per window, independent: the tagger runs it in chunks of windows in bounded
memory) and `across_windows` (across a track's windows: cheap). `__call__` chains them.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxtag.models.temporal import LSTM, BiLSTM, SelfAttention
from jaxtag.models.trunks import TRUNKS


def compress(mel, compression: str, log_scale: float):
    """Magnitude compression of a power mel: "none" (paper), "log1p": log(1 + C mel), "db"."""
    if compression == "none":
        return mel
    if compression == "log1p":
        return jnp.log1p(log_scale * mel)
    if compression == "db":
        return 10.0 * jnp.log10(jnp.maximum(mel, 1e-10))
    raise ValueError(f"compression must be 'none', 'log1p' or 'db', got {compression!r}")


def activate(scores, output_activation: str):
    if output_activation == "sigmoid":
        return nn.sigmoid(scores)
    if output_activation == "none":
        return scores
    raise ValueError(f"output_activation must be 'sigmoid' or 'none', got {output_activation!r}")


class TaggingNetwork(nn.Module):
    num_tags: int
    trunk: str = "paper"
    temporal: str = "none"                       # "none", "lstm", "bilstm", "attention"
    conv_channels: Sequence[int] = (20, 40, 80, 80)
    dense_sizes: Sequence[int] = (1000, 800, 600)  # trunk features, then the head's hidden layers
    lstm_size: int = 500
    lstm_initial_state: str = "random"
    attention_heads: int = 4
    output_activation: str = "sigmoid"
    compression: str = "none"
    log_scale: float = 10000.0
    # Per-mel-bin standardisation, from the training split (saved with the checkpoint); None: off.
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None
    # Computation dtype (bfloat16 on accelerators); parameters, input transform and outputs stay float32.
    dtype: Any = jnp.float32
    # The CPU fast path of the conv trunks (chosen by create_model) and its windows per chunk.
    cpu_fast: bool = False
    window_chunk: int = 0
    # A pretrained trunk (musicnn): whether its weights train (fine-tuning) or stay frozen, and the
    # layer whose features it gives.
    trunk_trainable: bool = True
    trunk_layer: str = "penultimate"

    def setup(self):
        options = {"paper": {"window_chunk": self.window_chunk},
                   "musicnn": {"trainable": self.trunk_trainable, "layer": self.trunk_layer}}.get(self.trunk, {})
        self.window_trunk = TRUNKS[self.trunk](tuple(self.conv_channels), self.dense_sizes[0], dtype=self.dtype,
                                               cpu_fast=self.cpu_fast, name="trunk", **options)
        if self.temporal == "lstm":
            self.context = LSTM(self.lstm_size, self.lstm_initial_state, dtype=self.dtype, name="lstm")
        elif self.temporal == "bilstm":
            self.context = BiLSTM(self.lstm_size, self.lstm_initial_state, dtype=self.dtype, name="bilstm")
        elif self.temporal == "attention":
            self.context = SelfAttention(self.attention_heads, dtype=self.dtype, name="attention")
        elif self.temporal != "none":
            raise ValueError(f"unknown temporal model {self.temporal!r}")
        self.hidden = [nn.Dense(size, dtype=self.dtype, name=f"dense_{i}")
                       for i, size in enumerate(self.dense_sizes[1:], 1)]
        self.out = nn.Dense(self.num_tags, dtype=self.dtype, name="out")

    def transform_input(self, mel):
        """Compression and standardisation, in float32 (a power mel spans too many decades for
        bfloat16); the result is cast to the computation dtype."""
        x = compress(jnp.asarray(mel, jnp.float32), self.compression, self.log_scale)
        if self.input_mean is not None:
            x = (x - jnp.asarray(self.input_mean, x.dtype)) / jnp.asarray(self.input_std, x.dtype)
        return x.astype(self.dtype)

    def encode(self, mel, present, train: bool = False):
        """Per-window features [B, L, dense_sizes[0]]."""
        b, l = mel.shape[:2]
        x = self.transform_input(mel).reshape((b * l,) + mel.shape[2:])
        h = self.window_trunk(x, present.reshape(b * l), train)
        return h.reshape(b, l, -1)

    def penultimate(self, features, present, train: bool = False):
        """The input of the output layer per window [B, L, dense_sizes[-1]]: the temporal model
        and the hidden dense layers over the window features (embeddings for search)."""
        del train
        if self.temporal in ("lstm", "bilstm"):  # paper 4.2: [window features, LSTM output]
            h = jnp.concatenate([features, self.context(features, present)], axis=-1)
        elif self.temporal == "attention":
            h = self.context(features, present)
        else:
            h = features
        for layer in self.hidden:
            h = nn.relu(layer(h))
        return h

    def across_windows(self, features, present, train: bool = False):
        """Per-window outputs [B, L, num_tags] from the window features."""
        h = self.penultimate(features, present, train)
        return activate(self.out(h).astype(jnp.float32), self.output_activation)

    def __call__(self, mel, present, train: bool = False):
        return self.across_windows(self.encode(mel, present, train), present, train)
