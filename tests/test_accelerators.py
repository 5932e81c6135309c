"""Ready for GPU and TPU without one here: the jitted train step of both paper models and the
tagger's model lower for `cuda` and `tpu` (jax.export lowers for any platform without its
device), so code that could not run there fails here; and bfloat16 compute trains on CPU with
results close to float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from conftest import tiny_config
from jaxtag.models import create_model
from jaxtag.training import steps

PLATFORMS = ("cuda", pytest.param("tpu", marks=pytest.mark.slow))  # the fast tier lowers for one


def _spec(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def _batch_spec(length=8, window=32, n_mels=32, n_tags=18, rows=2):
    return {"mel": jax.ShapeDtypeStruct((rows, length, window, n_mels), jnp.float32),
            "labels": jax.ShapeDtypeStruct((rows, length, n_tags), jnp.float32),
            "mask": jax.ShapeDtypeStruct((rows, length), jnp.bool_),
            "present": jax.ShapeDtypeStruct((rows, length), jnp.bool_)}


KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", ["cnn", "cnn_lstm"])
def test_train_step_lowers_for_accelerators(name, platform, data_dir):
    config = tiny_config(data_dir, **{"model.name": name})
    # The model as it is built on that platform (model.implementation "auto": plain Flax there).
    model = create_model(config.model, 18, backend=platform)
    assert not model.cpu_fast
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    exported = export.export(steps.make_train_step(model, "margin"), platforms=[platform])(
        _spec(state), _batch_spec(), KEY)
    assert exported.platforms == (platform,)
    # Outputs: the state, per-track losses [B], rows holding a track [B], whether the update applied.
    out_state, per_track, valid, finite = jax.tree.unflatten(exported.out_tree, exported.out_avals)
    assert per_track.shape == (2,) and valid.dtype == jnp.bool_ and finite.shape == ()
    assert jax.tree.structure(out_state) == jax.tree.structure(state)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_the_tagger_model_lowers_for_accelerators(trained, platform):
    from jaxtag.tagging.tagger import Tagger
    _, workdir, _ = trained
    tagger = Tagger.from_workdir(workdir)
    model = create_model(tagger.config.model, len(tagger.tags), input_stats=tagger.meta.get("input_stats"),
                         backend=platform)
    f = tagger.frontend
    mel = jax.ShapeDtypeStruct((1, 4, f.window_frames, f.n_mels), jnp.float32)
    present = jax.ShapeDtypeStruct((1, 4), jnp.bool_)
    encode = jax.jit(lambda v, m, p: model.apply(v, m, p, method=model.encode))
    features = export.export(encode, platforms=[platform])(_spec(tagger.variables), mel, present)
    across = jax.jit(lambda v, h, p, k: model.apply(v, h, p, method=model.across_windows, rngs={"lstm_state": k}))
    scores = export.export(across, platforms=[platform])(_spec(tagger.variables), features.out_avals[0], present, KEY)
    assert scores.out_avals[0].shape == (1, 4, len(tagger.tags))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn_lstm", "resnet_attention"])
def test_bfloat16_compute_trains_with_float32_state_close_to_float32(name, data_dir):
    overrides = {"model.name": name, "model.lstm_initial_state": "zeros"}
    if name.startswith("resnet"):
        overrides["model.conv_channels"] = (4, 8)
    rng = np.random.default_rng(0)
    present = np.arange(6)[None] < np.array([[6], [4]])
    batch = {"mel": rng.uniform(size=(2, 6, 32, 32)).astype(np.float32) * 5,
             "labels": (rng.uniform(size=(2, 6, 18)) < 0.4).astype(np.float32), "mask": present, "present": present}
    results = {}
    for dtype in ("float32", "bfloat16"):
        config = tiny_config(data_dir, **overrides, **{"model.dtype": dtype})
        model = create_model(config.model, 18)
        state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
        step = steps.make_train_step(model, config.train.loss)
        predict = steps.make_predict_step(model)
        before = np.asarray(predict(state.variables, batch, jax.random.PRNGKey(1)))
        for _ in range(3):
            state, per_track, _, finite = step(state, batch, jax.random.PRNGKey(1))
            assert bool(finite)
        dtypes = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state)) if hasattr(leaf, "dtype")}
        assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}  # parameters, Adam moments, count
        assert per_track.dtype == jnp.float32 and before.dtype == np.float32
        initial = steps.create_train_state(config, model, jax.random.PRNGKey(0)).params
        moves = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), state.params, initial)
        results[dtype] = (before, np.asarray(per_track), np.concatenate([m.ravel() for m in jax.tree.leaves(moves)]))
    (b32, l32, m32), (b16, l16, m16) = results["float32"], results["bfloat16"]
    assert np.isfinite(b16).all() and np.isfinite(l16).all()
    np.testing.assert_allclose(b16, b32, atol=0.03)         # sigmoid outputs, bfloat16 has ~3 digits
    np.testing.assert_allclose(l16, l32, rtol=0.03)
    # Three Adam steps moved the parameters alike: Adam's moves are sign-like, so compare signs
    # where float32 moved clearly.
    clear = np.abs(m32) > 1e-4
    assert clear.sum() > 1000 and np.mean(np.sign(m16[clear]) == np.sign(m32[clear])) > 0.9


@pytest.mark.slow   # 14 s for cuda (the fast tier's budget)
@pytest.mark.parametrize("platform", PLATFORMS)
def test_musicnn_tagger_and_transfer_train_step_lower_for_accelerators(platform, data_dir, pretrained_cache,
                                                                     monkeypatch):
    from conftest import tiny_musicnn_config
    from jaxtag.models.musicnn import MusicnnTagger
    tagger = MusicnnTagger()
    mel = jax.ShapeDtypeStruct((1, 4, 187, 96), jnp.float32)
    variables = jax.eval_shape(lambda: tagger.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 187, 96))))
    apply = jax.jit(lambda v, m: tagger.apply(v, m))
    assert export.export(apply, platforms=[platform])(variables, mel).out_avals[0].shape == (1, 4, 50)
    # musicnn_lstm fine-tuning: the multi_transform optimizer and the frozen batch statistics.
    monkeypatch.setenv("JAXTAG_CACHE", pretrained_cache)
    config = tiny_musicnn_config(data_dir, **{"model.freeze_trunk": False})
    model = create_model(config.model, 18, backend=platform)
    state = steps.create_train_state(config, model, jax.random.PRNGKey(0))
    exported = export.export(steps.make_train_step(model, "margin"), platforms=[platform])(
        _spec(state), _batch_spec(window=64, n_mels=96), KEY)
    assert exported.platforms == (platform,)
