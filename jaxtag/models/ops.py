"""The CPU fast path: convolution and max-pool whose gradients are fast on XLA's CPU backend.

An optimisation only: the models are the plain Flax layers (nn.Conv, nn.max_pool) in
jaxtag.models.trunks, and create_model switches to these ops on CPU (model.implementation).
A paper-sized training step spent most of its time in two backward ops that XLA:CPU runs far below
its matmul rate (scripts/benchmark.py): the weight gradient of a 3x3 convolution (lowered as a
convolution whose contraction runs over the batch: 9-17 GFLOP/s) and the gradient of a 2x2
max-pool (select-and-scatter: 1.3 s of a 9 s step). Here:

- `conv3x3`: the forward pass and the input gradient are XLA's own convolutions; the weight
  gradient is 9 matmuls, one per kernel tap, of the shifted input (transposed) with the output
  gradient (about 5x faster on CPU).
- `max_pool2x2`: the gradient goes to the first maximum of each 2x2 block in row-major order (the
  element XLA's select-and-scatter picks), computed with fused elementwise ops.
- `conv_relu_pool_stack`: the paper's conv layers with a written-out gradient that keeps fewer
  activations for the backward pass; `conv_stack_in_chunks` runs it over chunks of windows, so
  each layer's activations stay in cache, and skips chunks of padding windows.

All give the same values as jax.grad of the lax references and of the plain Flax models
(tests/test_ops.py, tests/test_models.py).
"""
from __future__ import annotations

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


@jax.custom_vjp
def conv3x3(x, w):
    """3x3 convolution, stride 1, zero padding 1 ("same"), NHWC input, HWIO kernel."""
    return _conv(x, w)


def _conv3x3_fwd(x, w):
    return _conv(x, w), (x, w)


def _input_grad(g, w):
    """The input gradient of a "same" 3x3 convolution: g convolved with the flipped kernel."""
    return _conv(g, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))


def _weight_grad(x, g, w):
    return weight_grad_matmul(x, g).astype(w.dtype)


def _conv3x3_bwd(residuals, g):
    x, w = residuals
    return _input_grad(g, w), _weight_grad(x, g, w)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _max_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


@jax.custom_vjp
def max_pool2x2(x):
    """2x2 max-pool, stride 2, on [n, h, w, c] (h and w even)."""
    return _max_pool(x)


def _max_pool_fwd(x):
    return max_pool2x2(x), x


def _max_pool_bwd(x, g):
    return (_max_pool_grad(x, g),)


def _max_pool_grad(x, g):
    # The output is recomputed (a cheap fused max) rather than kept: less memory to save.
    y = _max_pool(x)
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
    return jnp.stack([top, bottom], axis=2).reshape(x.shape)


max_pool2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def _stack_forward(params, x):
    """Every layer's ReLU output, and the features. params: ((kernel, bias), ...); a 2x2 max-pool
    follows every second layer."""
    outputs = []
    for i, (w, b) in enumerate(params):
        x = jnp.maximum(_conv(x, w) + b, 0)
        outputs.append(x)
        if i % 2 == 1:
            x = max_pool2x2(x)
    return outputs, x


@jax.custom_vjp
def conv_relu_pool_stack(params, x):
    """The paper's conv layers on [n, h, w, c]: 3x3 "same" conv + bias + ReLU per layer, a 2x2
    max-pool after every second layer. params: ((kernel [3, 3, cin, cout], bias [cout]), ...).

    Its gradient is written out so that the backward pass keeps only the ReLU outputs of layers
    2.. (the first layer, one input channel, and the pools are recomputed, cheaply): less memory
    written and read per window than autodiff would keep, which matters when this runs inside a
    scan over chunks of windows (every kept value is stacked over the chunks)."""
    return _stack_forward(params, x)[1]


def _stack_fwd(params, x):
    outputs, y = _stack_forward(params, x)
    return y, (params, x, outputs[1:])


def _stack_bwd(residuals, g):
    params, x, kept = residuals
    w0, b0 = params[0]
    outputs = [jnp.maximum(_conv(x, w0) + b0, 0)] + list(kept)
    inputs = [x] + [_max_pool(o) if i % 2 == 1 else o for i, o in enumerate(outputs[:-1])]
    grads = [None] * len(params)
    for i in reversed(range(len(params))):
        w, _ = params[i]
        if i % 2 == 1:
            g = _max_pool_grad(outputs[i], g)
        g = jnp.where(outputs[i] > 0, g, jnp.zeros_like(g))  # through the ReLU
        grads[i] = (_weight_grad(inputs[i], g, w), jnp.sum(g, axis=(0, 1, 2)))
        g = _input_grad(g, w)
    return tuple(grads), g


conv_relu_pool_stack.defvjp(_stack_fwd, _stack_bwd)


def conv_stack_in_chunks(params, x, present, chunk: int):
    """conv_relu_pool_stack over windows x [n, h, w, c] in chunks of `chunk` windows (a scan), the
    features flattened [n, h' * w' * c']. A chunk whose windows are all padding (present False)
    is not computed (zeros): padding is masked downstream, so this changes no real window's
    output or gradient, and saves the padding's share of the step. present: [n] or None."""
    n = x.shape[0]
    extra = -n % chunk
    x = jnp.pad(x, ((0, extra),) + ((0, 0),) * (x.ndim - 1))
    present = jnp.ones((n,), bool) if present is None else present
    present = jnp.pad(present, (0, extra))
    out = jax.eval_shape(conv_relu_pool_stack, params, x[:chunk])
    skip = (n + extra) // chunk > 1  # skipping only pays when there are several chunks

    def body(carry, inputs):
        xc, pc = inputs
        if skip:
            y = lax.cond(pc.any(), conv_relu_pool_stack, lambda p, v: jnp.zeros(out.shape, out.dtype), params, xc)
        else:
            y = conv_relu_pool_stack(params, xc)
        return carry, y.reshape(chunk, -1)

    _, h = lax.scan(body, None, (x.reshape((-1, chunk) + x.shape[1:]), present.reshape(-1, chunk)))
    return h.reshape(n + extra, -1)[:n]
