"""Convolution and max-pool whose gradients are fast on XLA's CPU backend.

A paper-sized training step spent most of its time in two backward ops that XLA:CPU runs far below
its matmul rate (scripts/benchmark.py): the weight gradient of a 3x3 convolution (lowered as a
convolution whose contraction runs over the batch: 9-17 GFLOP/s) and the gradient of a 2x2
max-pool (select-and-scatter: 1.3 s of a 9 s step). Here:

- `conv3x3`: the forward pass and the input gradient are XLA's own convolutions; on CPU the weight
  gradient is 9 matmuls, one per kernel tap, of the shifted input (transposed) with the output
  gradient (about 5x faster). Other platforms keep XLA's own weight gradient;
  `lax.platform_dependent` picks one when the program is compiled, so the same code runs anywhere.
- `max_pool2x2`: the gradient goes to the first maximum of each 2x2 block in row-major order (the
  element XLA's select-and-scatter picks), computed with fused elementwise ops.

Both give the same values as jax.grad of the lax reference (tests/test_ops.py).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DIMENSIONS)


def weight_grad_matmul(x, g):
    """The weight gradient of conv3x3 for input x [n, h, w, cin] and output gradient
    g [n, h, w, cout]: for each tap (i, j), shifted x^T @ g -> [3, 3, cin, cout]."""
    n, h, w, cin = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    gm = g.reshape(-1, g.shape[-1])
    taps = [xp[:, i:i + h, j:j + w, :].reshape(-1, cin).T @ gm for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, cin, g.shape[-1])


def _weight_grad_xla(x, g, w_shape, w_dtype):
    return jax.vjp(lambda w: _conv(x, w), jnp.zeros(w_shape, w_dtype))[1](g)[0]


@jax.custom_vjp
def conv3x3(x, w):
    """3x3 convolution, stride 1, zero padding 1 ("same"), NHWC input, HWIO kernel."""
    return _conv(x, w)


def _conv3x3_fwd(x, w):
    return _conv(x, w), (x, w)


def _conv3x3_bwd(residuals, g):
    x, w = residuals
    # The input gradient of a "same" 3x3 convolution: g convolved with the flipped kernel.
    dx = _conv(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))
    dw = lax.platform_dependent(
        x, g, cpu=weight_grad_matmul,
        default=functools.partial(_weight_grad_xla, w_shape=w.shape, w_dtype=w.dtype))
    return dx, dw.astype(w.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


@jax.custom_vjp
def max_pool2x2(x):
    """2x2 max-pool, stride 2, on [n, h, w, c] (h and w even)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _max_pool_fwd(x):
    y = max_pool2x2(x)
    return y, (x, y)


def _max_pool_bwd(residuals, g):
    x, y = residuals
    n, h, w, c = x.shape
    is_max = x.reshape(n, h // 2, 2, w // 2, 2, c) == y[:, :, None, :, None, :]
    # The first maximum of each block, in row-major order, takes the whole gradient.
    m00 = is_max[:, :, 0, :, 0]
    m01 = is_max[:, :, 0, :, 1] & ~m00
    m10 = is_max[:, :, 1, :, 0] & ~(m00 | m01)
    m11 = ~(m00 | m01 | m10)
    zero = jnp.zeros_like(g)
    top = jnp.stack([jnp.where(m00, g, zero), jnp.where(m01, g, zero)], axis=3)
    bottom = jnp.stack([jnp.where(m10, g, zero), jnp.where(m11, g, zero)], axis=3)
    return (jnp.stack([top, bottom], axis=2).reshape(x.shape),)


max_pool2x2.defvjp(_max_pool_fwd, _max_pool_bwd)
