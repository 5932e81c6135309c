"""Model shapes (the paper's sizes), padding invariance and temporal context."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from jaxtag.models import MODELS, create_model


def model_config(name, tiny=True, **kw):
    config = default.get_config().model
    config.name = name
    if tiny:
        config.conv_channels, config.dense_sizes, config.lstm_size = (4, 4, 8, 8), (32, 24, 16), 12
    config.update(kw)
    return config


@pytest.mark.parametrize("name", ["cnn", "cnn_lstm"])
def test_paper_sizes(name):
    model = create_model(model_config(name, tiny=False), 18)
    mel = jax.ShapeDtypeStruct((1, 5, 128, 128), jnp.float32)
    present = jax.ShapeDtypeStruct((1, 5), jnp.bool_)
    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(lambda m, p: model.init({"params": key, "lstm_state": key}, m, p), mel, present)["params"]
    out = jax.eval_shape(lambda w, m, p: model.apply({"params": w}, m, p, rngs={"lstm_state": key}),
                         params, mel, present)
    assert out.shape == (1, 5, 18)
    # Paper 4.1: conv 1->20->40, pool, 40->80->80, pool: 80 x 32 x 32 = 81920 features into dense 1000.
    assert params["trunk"]["conv0"]["kernel"].shape == (3, 3, 1, 20)
    assert params["trunk"]["conv3"]["kernel"].shape == (3, 3, 80, 80)
    assert params["trunk"]["dense_0"]["kernel"].shape == (81920, 1000)
    if name == "cnn_lstm":  # Paper 4.2: [dense-1000, LSTM-500] = 1500 into dense 800.
        assert params["dense_1"]["kernel"].shape == (1500, 800)
    else:
        assert params["dense_1"]["kernel"].shape == (1000, 800)
    assert params["out"]["kernel"].shape == (600, 18)


def _run(model, mel, present, key=0):
    k = jax.random.PRNGKey(key)
    params = model.init({"params": jax.random.PRNGKey(1), "lstm_state": k}, mel, present)
    return lambda m, p: np.asarray(model.apply(params, m, p, rngs={"lstm_state": k}))


@pytest.mark.parametrize("initial_state", ["random", "zeros"])
def test_padding_windows_do_not_change_real_windows(initial_state):
    model = create_model(model_config("cnn_lstm", lstm_initial_state=initial_state), 18)
    rng = np.random.default_rng(0)
    mel = rng.uniform(size=(2, 5, 32, 32)).astype(np.float32)
    present = np.ones((2, 5), bool)
    apply = _run(model, mel, present)
    out = apply(mel, present)
    padded = np.concatenate([mel, rng.uniform(size=(2, 3, 32, 32)).astype(np.float32) * 100], axis=1)
    padded_present = np.concatenate([present, np.zeros((2, 3), bool)], axis=1)
    out_padded = apply(padded, padded_present)
    np.testing.assert_allclose(out_padded[:, :5], out, rtol=1e-5, atol=1e-6)
    assert np.all((out >= 0) & (out <= 1))  # sigmoid outputs


def test_lstm_carries_context_and_cnn_does_not():
    rng = np.random.default_rng(0)
    mel = rng.uniform(size=(1, 4, 32, 32)).astype(np.float32)
    changed = mel.copy()
    changed[0, 0] *= 3.0
    present = np.ones((1, 4), bool)
    for name, expect_change in [("cnn", False), ("cnn_lstm", True)]:
        apply = _run(create_model(model_config(name), 18), mel, present)
        differs = not np.allclose(apply(mel, present)[0, 3], apply(changed, present)[0, 3], atol=1e-7)
        assert differs == expect_change, name


def test_logit_output_and_registry():
    model = create_model(model_config("cnn", output_activation="none"), 3)
    mel = np.full((1, 2, 32, 32), 50.0, np.float32)
    out = _run(model, mel, np.ones((1, 2), bool))(mel, np.ones((1, 2), bool))
    assert out.shape == (1, 2, 3)
    assert set(MODELS) >= {"cnn", "cnn_lstm"}
    with pytest.raises(ValueError, match="unknown model"):
        create_model(model_config("transformer_xl"), 3)


@pytest.mark.parametrize("name", ["cnn_bilstm", pytest.param("cnn_attention", marks=pytest.mark.slow),  # 8 s each
                                  pytest.param("resnet_lstm", marks=pytest.mark.slow), "resnet_attention",
                                  "resnet_bilstm"])
def test_other_models_are_padding_invariant_in_train_and_eval_mode(name):
    config = model_config(name, lstm_initial_state="zeros")
    if name.startswith("resnet"):
        config.conv_channels = (4, 8, 8)
    model = create_model(config, 5)
    rng = np.random.default_rng(0)
    mel = rng.uniform(size=(2, 5, 32, 32)).astype(np.float32)
    present = np.ones((2, 5), bool)
    present[1, 3:] = False  # the second track is shorter
    key = jax.random.PRNGKey(0)
    variables = model.init({"params": key, "lstm_state": key}, mel, present)
    padded = np.concatenate([mel, rng.uniform(size=(2, 3, 32, 32)).astype(np.float32) * 100], axis=1)
    padded_present = np.concatenate([present, np.zeros((2, 3), bool)], axis=1)
    for train in (False, True):
        kw = dict(train=train, rngs={"lstm_state": key}, mutable=["batch_stats"] if train else False)
        out = model.apply(variables, mel, present, **kw)
        out_padded = model.apply(variables, padded, padded_present, **kw)
        if train:
            (out, stats), (out_padded, stats_padded) = out, out_padded
            if stats:  # batch statistics ignore padding windows
                jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), stats, stats_padded)
        np.testing.assert_allclose(np.asarray(out_padded)[0, :5], np.asarray(out)[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(out_padded)[1, :3], np.asarray(out)[1, :3], rtol=1e-4, atol=1e-5)


@pytest.mark.slow   # 10 s (the fast tier's budget)
def test_bidirectional_and_attention_see_the_future():
    rng = np.random.default_rng(0)
    mel = rng.uniform(size=(1, 4, 32, 32)).astype(np.float32)
    changed = mel.copy()
    changed[0, 3] *= 3.0
    present = np.ones((1, 4), bool)
    for name, expect in [("cnn_lstm", False), ("cnn_bilstm", True), ("cnn_attention", True)]:
        apply = _run(create_model(model_config(name), 18), mel, present)
        assert (not np.allclose(apply(mel, present)[0, 0], apply(changed, present)[0, 0], atol=1e-7)) == expect, name


def test_input_compression_and_normalisation():
    config = model_config("cnn", compression="log1p", normalize=True, log_scale=10.0)
    stats = {"mean": [1.0] * 32, "std": [2.0] * 32}
    model = create_model(config, 3, input_stats=stats)
    mel = np.full((1, 1, 32, 32), 3.0, np.float32)
    x = model.apply({}, mel, method=model.transform_input)
    np.testing.assert_allclose(x, (np.log1p(30.0) - 1.0) / 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="statistics"):
        create_model(config, 3)


@pytest.mark.slow
def test_paper_trunk_skips_chunks_of_padding_without_changing_real_windows_or_gradients():
    from jaxtag.models.trunks import PaperTrunk
    trunk = PaperTrunk((4, 4, 8, 8), 16, cpu_fast=True, window_chunk=2)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 32, 32)).astype(np.float32)
    present = np.array([True, True, True, False, False, False])  # windows 4, 5: a chunk of padding only
    params = trunk.init(jax.random.PRNGKey(0), x, present)
    weights = rng.normal(size=(6, 16)).astype(np.float32) * present[:, None]  # a loss on real windows

    def loss(p, x, present):
        return jnp.sum(trunk.apply(p, x, present) * weights)

    value, grads = jax.value_and_grad(loss)(params, x, present)
    # All windows present: nothing is skipped; the loss still reads the real windows only.
    value_full, grads_full = jax.value_and_grad(loss)(params, x, np.ones(6, bool))
    np.testing.assert_allclose(value, value_full, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, grads_full)
    # The skipped chunk is not computed: garbage there cannot reach values or gradients.
    poisoned = x.copy()
    poisoned[4:] = np.nan
    value_p, grads_p = jax.value_and_grad(loss)(params, poisoned, present)
    np.testing.assert_allclose(value_p, value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), grads_p, grads)
    assert not np.isfinite(jax.grad(loss)(params, poisoned, np.ones(6, bool))["params"]["dense_0"]["kernel"]).all()


def test_db_compression_is_finite_on_silence():
    model = create_model(model_config("cnn", compression="db"), 3)
    mel = np.array([0.0, 1e-12, 1.0, 100.0], np.float32).reshape(1, 1, 1, 4)
    x = model.apply({}, mel, method=model.transform_input)
    np.testing.assert_allclose(np.asarray(x).ravel(), [-100.0, -100.0, 0.0, 20.0], rtol=1e-5, atol=1e-4)
