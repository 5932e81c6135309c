"""Window trunks: one long-term window [frames, n_mels] -> a feature vector. Windows are independent.

`paper`: the paper's conv trunk (4.1) and its first dense layer.
`resnet`: a short-chunk CNN with residual blocks and batch norm, after Won et al. 2020, the field's
strong simple baseline for tagging, sized for CPU training.
`musicnn`: musicnn's published network up to its penultimate layer (jaxtag.models.musicnn), then
a dense layer: transfer from real music.

Both are plain Flax (nn.Conv, nn.max_pool). With `cpu_fast` (chosen by create_model, on CPU) the
same parameters run through jaxtag.models.ops instead: the same values and gradients, faster
on XLA's CPU backend.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtag.models import ops
from jaxtag.models.musicnn import MusicnnTrunk


class ConvParams(nn.Module):
    """The parameters of nn.Conv(features, (3, 3)) (same names, shapes and initialisers), for the
    CPU fast path, which applies them with jaxtag.models.ops."""
    features: int

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, in_features, self.features))
        return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,))


def windows_per_chunk(chunk: int, n: int) -> int:
    """CPU fast path: chunk > 0: that many windows; 0: automatic, CHUNK_ON_CPU on a single device,
    all n otherwise (a sharded batch must not be split by a scan)."""
    if chunk <= 0:
        chunk = CHUNK_ON_CPU if jax.device_count() == 1 else n
    return max(1, min(chunk, n))


# On one CPU the conv layers run over chunks of 2 windows, so each layer's activations stay in
# cache through forward and backward: 1.5x faster steps than whole-track layers on 2 cores
# (scripts/benchmark.py --ablation).
CHUNK_ON_CPU = 2


class PaperTrunk(nn.Module):
    """Paper 4.1: 3x3 convs (pad 1) with ReLU, two per block, a 2x2 max-pool after each block:
    1 -> 20 -> 40, pool, 40 -> 80 -> 80, pool: 128x128 becomes 80x32x32; then dense 1000 + ReLU."""
    channels: Sequence[int] = (20, 40, 80, 80)
    features: int = 1000
    dtype: Any = jnp.float32
    cpu_fast: bool = False
    window_chunk: int = 0  # CPU fast path: windows per chunk (0: automatic)

    @nn.compact
    def __call__(self, x, present=None, train: bool = False):  # x: [N, frames, n_mels], present: [N]
        del train
        x = x[..., None].astype(self.dtype)
        if self.cpu_fast:
            h = self._conv_layers_cpu_fast(x, present)
        else:
            for i, c in enumerate(self.channels):
                x = nn.relu(nn.Conv(c, (3, 3), padding=1, dtype=self.dtype, name=f"conv{i}")(x))
                if i % 2 == 1:
                    x = nn.max_pool(x, (2, 2), strides=(2, 2))
            h = x.reshape(x.shape[0], -1)
        return nn.relu(nn.Dense(self.features, dtype=self.dtype, name="dense_0")(h))

    def _conv_layers_cpu_fast(self, x, present):
        params, c_in = [], x.shape[-1]
        for i, c in enumerate(self.channels):
            kernel, bias = ConvParams(c, name=f"conv{i}")(c_in)
            params.append((kernel.astype(self.dtype), bias.astype(self.dtype)))
            c_in = c
        return ops.conv_stack_in_chunks(tuple(params), x, present, windows_per_chunk(self.window_chunk, x.shape[0]))


class Conv3x3CpuFast(nn.Module):
    """nn.Conv(features, (3, 3), padding=1) (same parameters and initialisers), with the CPU-fast
    gradients of jaxtag.models.ops."""
    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        y = ops.conv3x3(x, kernel.astype(self.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(self.dtype)
        return y


class ResidualBlock(nn.Module):
    channels: int
    dtype: Any = jnp.float32
    cpu_fast: bool = False

    @nn.compact
    def __call__(self, x, mask, train: bool):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype, name=name)
        if self.cpu_fast:
            conv = lambda name: Conv3x3CpuFast(self.channels, use_bias=False, dtype=self.dtype, name=name)
            pool = ops.max_pool2x2
        else:
            conv = lambda name: nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name=name)
            pool = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))

        def mask_like(v):  # padding windows must not enter the batch statistics
            return None if mask is None else jnp.broadcast_to(mask[:, None, None, None], v.shape)

        y = conv("conv1")(x)
        y = nn.relu(norm("bn1")(y, mask=mask_like(y)))
        y = conv("conv2")(y)
        y = norm("bn2")(y, mask=mask_like(y))
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), use_bias=False, dtype=self.dtype, name="project")(x)
            x = norm("bn_project")(x, mask=mask_like(x))
        return pool(nn.relu(x + y))


class ResNetTrunk(nn.Module):
    """Residual blocks (conv-BN-ReLU-conv-BN + skip, then 2x2 max-pool), global max pool over time
    and frequency, dense + ReLU."""
    channels: Sequence[int] = (16, 32, 64, 128, 128)
    features: int = 256
    dtype: Any = jnp.float32
    cpu_fast: bool = False

    @nn.compact
    def __call__(self, x, mask=None, train: bool = False):
        x = x[..., None].astype(self.dtype)
        for i, c in enumerate(self.channels):
            x = ResidualBlock(c, self.dtype, self.cpu_fast, name=f"block{i}")(x, mask, train)
        x = jnp.max(x, axis=(1, 2))
        return nn.relu(nn.Dense(self.features, dtype=self.dtype, name="dense_0")(x))


TRUNKS = {"paper": PaperTrunk, "resnet": ResNetTrunk, "musicnn": MusicnnTrunk}
