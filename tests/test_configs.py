"""Every config file builds, validates and yields a model (leaf-audio style)."""
import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from helpers import processes
from jaxtag.config_validation import validate_config
from jaxtag.data.tags import resolve_tags
from jaxtag.errors import ConfigError
from jaxtag.models import create_model

CONFIG_NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
                      for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
                      if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_builds(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    validate_config(config)
    tags = resolve_tags(config.data.tags)
    d = config.data
    stats = {"mean": [0.0] * d.n_mels, "std": [1.0] * d.n_mels} if config.model.normalize else None
    model = create_model(config.model, len(tags), input_stats=stats)
    mel = jax.ShapeDtypeStruct((1, 2, d.window_frames, d.n_mels), jnp.float32)
    present = jax.ShapeDtypeStruct((1, 2), jnp.bool_)
    key = jax.random.PRNGKey(0)
    params = jax.eval_shape(lambda m, p: model.init({"params": key, "lstm_state": key}, m, p), mel, present)
    out = jax.eval_shape(lambda w, m, p: model.apply(w, m, p, rngs={"lstm_state": key}), params, mel, present)
    assert out.shape == (1, 2, len(tags))


def test_paper_configs_keep_the_paper_settings():
    for name in ("cnn", "cnn_lstm"):
        c = importlib.import_module(f"configs.{name}").get_config()
        assert c.model.name == name
        assert (c.data.sample_rate, c.data.n_fft, c.data.hop_length, c.data.n_mels) == (20500, 2048, 1024, 128)
        assert (c.data.window_frames, c.data.window_hop) == (128, 64)
        assert c.train.learning_rate == 1e-5 and c.train.batch_size == 1 and c.train.loss == "margin"
        assert len(resolve_tags(c.data.tags)) == 18


@pytest.mark.parametrize("field, value, message", [
    ("model.name", "resnet9000", "model.name"),
    ("train.learning_rate", -1.0, "learning_rate"),
    ("data.tags", "Emotion-Grumpy", "unknown tag"),
    ("data.n_mels", 2, "at least"),
    ("train.batch_size", 0, "batch_size"),
    ("data.window_hop", 500, "exceeds"),
    ("data.window_frames", 4096, "longer than every track"),
    ("model.implementation", "cuda_fast", "model.implementation"),
    ("model.dtype", "float16", "model.dtype"),
    ("model.musicnn_layer", "last", "model.musicnn_layer"),
])
def test_impossible_values_fail_before_any_work(field, value, message):
    config = importlib.import_module("configs.cnn_lstm").get_config()
    section, leaf = field.split(".")
    config[section][leaf] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)


def test_workdir_defaults_to_runs_named_after_the_config():
    # In a subprocess: jaxtag.main defines absl flags (e.g. --workdir) that jaxtag.tag also defines.
    code = ("from jaxtag.main import default_workdir; "
            "print(default_workdir('configs/cnn_lstm.py')); print(default_workdir('/abs/configs/resnet_attention.py:x'))")
    out = processes.run(["-c", code], timeout=300)
    assert out.stdout.split() == [os.path.join("runs", "cnn_lstm"), os.path.join("runs", "resnet_attention")]
