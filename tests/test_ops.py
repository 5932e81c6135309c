"""The CPU fast path: convolution and max-pool (jaxtag.models.ops) against jax.grad of lax
references, and the fast trunks against the plain Flax ones (outputs and gradients)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxtag.models import ops, trunks


def reference_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def reference_pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _numpy_conv(x, w):
    """Direct loops over the definition: y[n,h,w,o] = sum x_pad[n,h+i,w+j,c] w[i,j,c,o]."""
    n, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).astype(np.float64)
    y = np.zeros((n, h, wd, w.shape[-1]))
    for i in range(3):
        for j in range(3):
            y += np.einsum("nhwc,co->nhwo", xp[:, i:i + h, j:j + wd], w[i, j])
    return y


@pytest.mark.parametrize("shape", [(3, 8, 6, 1, 5), (2, 12, 10, 5, 7), (1, 4, 4, 16, 3)])
def test_conv3x3_values_and_gradients_match_lax(shape):
    n, h, w, cin, cout = shape
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, h, w, cin)).astype(np.float32)
    k = rng.normal(size=(3, 3, cin, cout)).astype(np.float32)
    np.testing.assert_allclose(ops.conv3x3(x, k), _numpy_conv(x, k), rtol=1e-4, atol=1e-4)
    # A nonlinear objective, so the output gradient differs everywhere.
    objective = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k)) * jnp.arange(n * h * w * cout).reshape(n, h, w, cout))
    expected = jax.grad(objective(reference_conv), (0, 1))(x, k)
    got = jax.jit(jax.grad(objective(ops.conv3x3), (0, 1)))(x, k)
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-3 * float(np.abs(e).max()))


def test_weight_gradient_matmul_matches_xla_weight_gradient():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 10, 14, 6)).astype(np.float32)
    g = rng.normal(size=(4, 10, 14, 9)).astype(np.float32)
    expected = jax.vjp(lambda k: reference_conv(x, k), jnp.zeros((3, 3, 6, 9)))[1](g)[0]
    np.testing.assert_allclose(ops.weight_grad_matmul(x, g), expected, rtol=1e-4, atol=1e-4)
    # One tap by hand: dW[0, 2] pairs x shifted up-left... x_pad[n, h, w + 2] with g[n, h, w].
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_allclose(ops.weight_grad_matmul(x, g)[0, 2],
                               np.einsum("nhwc,nhwo->co", xp[:, 0:10, 2:16], g), rtol=1e-4, atol=1e-4)


def test_max_pool_gradient_goes_to_the_first_maximum_like_xla():
    rng = np.random.default_rng(2)
    # Coarse values make ties common, including all-zero blocks after a ReLU.
    x = np.maximum(np.round(rng.normal(size=(2, 6, 8, 3)) * 2) / 2, 0).astype(np.float32)
    np.testing.assert_array_equal(ops.max_pool2x2(x), reference_pool(x))
    weights = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    objective = lambda pool: lambda x: jnp.sum(pool(x) * weights)
    expected = jax.grad(objective(reference_pool))(x)
    got = jax.jit(jax.grad(objective(ops.max_pool2x2)))(x)
    np.testing.assert_array_equal(got, expected)
    # Each 2x2 block passes its gradient to exactly one element.
    blocks = np.asarray(got).reshape(2, 3, 2, 4, 2, 3)
    assert np.all((blocks != 0).sum(axis=(2, 4)) <= 1)
    np.testing.assert_allclose(blocks.sum(axis=(2, 4)), weights, rtol=1e-6)


def reference_stack(params, x):
    for i, (w, b) in enumerate(params):
        x = jax.nn.relu(reference_conv(x, w) + b)
        if i % 2 == 1:
            x = reference_pool(x)
    return x


def test_conv_relu_pool_stack_values_and_gradients_match_autodiff_of_lax():
    rng = np.random.default_rng(4)
    channels, c_in, params = (3, 4, 5, 5), 1, []
    for c in channels:
        params.append((rng.normal(size=(3, 3, c_in, c)).astype(np.float32) * 0.5,
                       rng.normal(size=(c,)).astype(np.float32) * 0.2))
        c_in = c
    params = tuple(params)
    x = rng.normal(size=(3, 12, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(ops.conv_relu_pool_stack(params, x), reference_stack(params, x), rtol=1e-5, atol=1e-5)
    weights = rng.normal(size=(3, 3, 2, 5)).astype(np.float32)
    objective = lambda stack: lambda p, x: jnp.sum(jnp.tanh(stack(p, x)) * weights)
    expected = jax.grad(objective(reference_stack), (0, 1))(params, x)
    got = jax.jit(jax.grad(objective(ops.conv_relu_pool_stack), (0, 1)))(params, x)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for e, g in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(e).max())))
    # The ReLUs really cut: some pre-activations are negative, so the test exercises the mask.
    assert float(jnp.mean(reference_conv(x, params[0][0]) + params[0][1] < 0)) > 0.1


@pytest.mark.parametrize("chunk", [pytest.param(1, marks=pytest.mark.slow), 2, 3, 7])   # 1: 8 s
def test_cpu_fast_paper_trunk_equals_the_plain_flax_trunk(chunk):
    """The CPU fast path (written-out gradients, conv layers scanned over chunks of windows; 7
    windows: chunks that do not divide it are padded) gives the plain nn.Conv/nn.max_pool trunk's
    outputs and gradients, with the same parameter tree."""
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(7, 16, 16)).astype(np.float32)
    plain = trunks.PaperTrunk((4, 4, 8, 8), 12)
    fast = trunks.PaperTrunk((4, 4, 8, 8), 12, cpu_fast=True, window_chunk=chunk)
    params = plain.init(jax.random.PRNGKey(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(fast.init(jax.random.PRNGKey(0), x))
    assert set(params["params"]) == {"conv0", "conv1", "conv2", "conv3", "dense_0"}
    np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x), rtol=1e-5, atol=1e-6)
    loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 jax.grad(loss(fast))(params), jax.grad(loss(plain))(params))


@pytest.mark.slow
def test_cpu_fast_resnet_trunk_equals_the_plain_flax_trunk():
    rng = np.random.default_rng(5)
    x = rng.uniform(size=(5, 16, 16)).astype(np.float32)
    mask = np.array([True, True, True, False, True])
    plain, fast = trunks.ResNetTrunk((4, 8), 6), trunks.ResNetTrunk((4, 8), 6, cpu_fast=True)
    variables = plain.init(jax.random.PRNGKey(0), x, mask, train=False)
    assert jax.tree.structure(variables) == jax.tree.structure(fast.init(jax.random.PRNGKey(0), x, mask))

    def loss(model):
        def f(params):
            out, updates = model.apply({**variables, "params": params}, x, mask, train=True, mutable=["batch_stats"])
            return jnp.sum(out ** 2), updates
        return jax.value_and_grad(f, has_aux=True)(variables["params"])

    (value_fast, stats_fast), grads_fast = loss(fast)
    (value_plain, stats_plain), grads_plain = loss(plain)
    np.testing.assert_allclose(value_fast, value_plain, rtol=1e-5)
    for got, want in [(grads_fast, grads_plain), (stats_fast, stats_plain)]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, want)


def test_the_cpu_fast_path_is_chosen_on_cpu_only():
    from jaxtag.models import uses_cpu_fast_path
    assert uses_cpu_fast_path("auto", "cpu") and uses_cpu_fast_path("cpu_fast", "tpu")
    assert not uses_cpu_fast_path("auto", "gpu") and not uses_cpu_fast_path("auto", "tpu")
    assert not uses_cpu_fast_path("flax", "cpu")
    with pytest.raises(ValueError, match="model.implementation"):
        uses_cpu_fast_path("fast")


def test_automatic_chunk_size():
    assert trunks.windows_per_chunk(0, 80) == (trunks.CHUNK_ON_CPU if jax.device_count() == 1 else 80)
    assert trunks.windows_per_chunk(5, 3) == 3
    assert trunks.windows_per_chunk(4, 80) == 4
