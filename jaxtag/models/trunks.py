"""Window trunks: one long-term window [frames, n_mels] -> a feature vector. Windows are independent.

`paper`: the paper's conv trunk (4.1) and its first dense layer.
`resnet`: a short-chunk CNN with residual blocks and batch norm, after Won et al. 2020, the field's
strong simple baseline for tagging, sized for CPU training.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class PaperTrunk(nn.Module):
    """3x3 convs (pad 1) with ReLU, two per block, a 2x2 max-pool after each block (paper 4.1):
    1 -> 20 -> 40, pool, 40 -> 80 -> 80, pool: 128x128 becomes 80x32x32; then dense 1000 + ReLU."""
    channels: Sequence[int] = (20, 40, 80, 80)
    features: int = 1000

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):  # x: [N, frames, n_mels]
        del mask, train
        x = x[..., None]
        for i, c in enumerate(self.channels):
            x = nn.relu(nn.Conv(c, (3, 3), padding=1, name=f"conv{i}")(x))
            if i % 2 == 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.relu(nn.Dense(self.features, name="dense_0")(x.reshape(x.shape[0], -1)))


class ResidualBlock(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x, mask, train: bool):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        # Padding windows must not enter the batch statistics: mask broadcasts over [H, W, C].
        m = None if mask is None else jnp.broadcast_to(mask[:, None, None, None], x.shape[:3] + (1,))
        y = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, name="conv1")(x)
        y = nn.relu(norm("bn1")(y, mask=None if m is None else jnp.broadcast_to(m, y.shape)))
        y = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, name="conv2")(y)
        y = norm("bn2")(y, mask=None if m is None else jnp.broadcast_to(m, y.shape))
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), use_bias=False, name="project")(x)
            x = norm("bn_project")(x, mask=None if m is None else jnp.broadcast_to(m, x.shape))
        return nn.max_pool(nn.relu(x + y), (2, 2), strides=(2, 2))


class ResNetTrunk(nn.Module):
    """Residual blocks (conv-BN-ReLU-conv-BN + skip, then 2x2 max-pool), global max pool over time
    and frequency, dense + ReLU."""
    channels: Sequence[int] = (16, 32, 64, 128, 128)
    features: int = 256

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        x = x[..., None]
        for i, c in enumerate(self.channels):
            x = ResidualBlock(c, name=f"block{i}")(x, mask, train)
        x = jnp.max(x, axis=(1, 2))
        return nn.relu(nn.Dense(self.features, name="dense_0")(x))


TRUNKS = {"paper": PaperTrunk, "resnet": ResNetTrunk}
