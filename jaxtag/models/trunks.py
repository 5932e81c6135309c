"""Window trunks: one long-term window [frames, n_mels] -> a feature vector. Windows are independent.

`paper`: the paper's conv trunk (4.1) and its first dense layer.
`resnet`: a short-chunk CNN with residual blocks and batch norm, after Won et al. 2020, the field's
strong simple baseline for tagging, sized for CPU training.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtag.models.ops import conv3x3, conv_relu_pool_stack, max_pool2x2


class Conv3x3(nn.Module):
    """nn.Conv(features, (3, 3), padding=1) (same parameters and initialisers), with the
    CPU-fast gradients of jaxtag.models.ops."""
    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, x.shape[-1], self.features))
        y = conv3x3(x, kernel.astype(x.dtype))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,)).astype(x.dtype)
        return y


class ConvParams(nn.Module):
    """The parameters of nn.Conv(features, (3, 3)) (same names, shapes and initialisers)."""
    features: int

    @nn.compact
    def __call__(self, in_features: int):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, in_features, self.features))
        return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,))


class PaperConvStack(nn.Module):
    """The paper's conv layers on one chunk of windows [n, frames, n_mels, 1] (a scan body).

    With `skip_padding`, a chunk of padding windows only (present all False) is not computed:
    its features are zeros. Padding windows are masked everywhere downstream, so this changes no
    real window's output or gradient; it saves the padding's share of the step (up to a fifth
    of a track padded from 65 to 80 windows)."""
    channels: Sequence[int]
    skip_padding: bool = False

    @nn.compact
    def __call__(self, carry, inputs):
        x, present = inputs
        params, c_in = [], x.shape[-1]
        for i, c in enumerate(self.channels):
            kernel, bias = ConvParams(c, name=f"conv{i}")(c_in)
            params.append((kernel.astype(x.dtype), bias.astype(x.dtype)))
            c_in = c
        params = tuple(params)
        if self.skip_padding:
            out_shape = jax.eval_shape(conv_relu_pool_stack, params, x)
            y = jax.lax.cond(present.any(), conv_relu_pool_stack,
                             lambda p, x: jnp.zeros(out_shape.shape, out_shape.dtype), params, x)
        else:
            y = conv_relu_pool_stack(params, x)
        return carry, y.reshape(y.shape[0], -1)


def windows_per_chunk(chunk: int, n: int) -> int:
    """chunk > 0: that many windows; 0: automatic, CHUNK_ON_CPU on a single CPU device, all n
    otherwise (accelerators want the whole batch; sharded batches must not be split by a scan)."""
    if chunk <= 0:
        chunk = CHUNK_ON_CPU if jax.default_backend() == "cpu" and jax.device_count() == 1 else n
    return max(1, min(chunk, n))


# On one CPU the conv layers run over chunks of 2 windows, so each layer's activations stay in
# cache through forward and backward: 1.5x faster steps than whole-track layers on 2 cores
# (scripts/benchmark.py --ablation).
CHUNK_ON_CPU = 2


class PaperTrunk(nn.Module):
    """3x3 convs (pad 1) with ReLU, two per block, a 2x2 max-pool after each block (paper 4.1):
    1 -> 20 -> 40, pool, 40 -> 80 -> 80, pool: 128x128 becomes 80x32x32; then dense 1000 + ReLU.

    The conv layers are an nn.scan over chunks of windows (windows are independent here), which
    changes speed, not results; the parameter tree is the same for every chunk size."""
    channels: Sequence[int] = (20, 40, 80, 80)
    features: int = 1000
    window_chunk: int = 0

    @nn.compact
    def __call__(self, x, present=None, train: bool = False):  # x: [N, frames, n_mels], present: [N]
        del train
        n = x.shape[0]
        chunk = windows_per_chunk(self.window_chunk, n)
        extra = -n % chunk
        x = jnp.pad(x, ((0, extra), (0, 0), (0, 0)))[..., None]
        present = jnp.ones((n,), bool) if present is None else present
        present = jnp.pad(present, (0, extra))
        stack = nn.scan(PaperConvStack, variable_broadcast="params", split_rngs={"params": False},
                        in_axes=0, out_axes=0)
        # Skipping only pays when there are several chunks (one chunk holds the real windows).
        skip = (n + extra) // chunk > 1
        _, h = stack(tuple(self.channels), skip, name="convs")(
            None, (x.reshape((-1, chunk) + x.shape[1:]), present.reshape(-1, chunk)))
        h = h.reshape(n + extra, -1)[:n]
        return nn.relu(nn.Dense(self.features, name="dense_0")(h))


class ResidualBlock(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, x, mask, train: bool):
        norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)
        # Padding windows must not enter the batch statistics: mask broadcasts over [H, W, C].
        m = None if mask is None else jnp.broadcast_to(mask[:, None, None, None], x.shape[:3] + (1,))
        y = Conv3x3(self.channels, use_bias=False, name="conv1")(x)
        y = nn.relu(norm("bn1")(y, mask=None if m is None else jnp.broadcast_to(m, y.shape)))
        y = Conv3x3(self.channels, use_bias=False, name="conv2")(y)
        y = norm("bn2")(y, mask=None if m is None else jnp.broadcast_to(m, y.shape))
        if x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), use_bias=False, name="project")(x)
            x = norm("bn_project")(x, mask=None if m is None else jnp.broadcast_to(m, x.shape))
        return max_pool2x2(nn.relu(x + y))


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
