"""Models, picked by name from one registry: name -> (window trunk, temporal model)."""
from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxtag.models.network import TaggingNetwork

MODELS = {
    "cnn": ("paper", "none"),             # paper 4.1
    "cnn_lstm": ("paper", "lstm"),        # paper 4.2
    "cnn_bilstm": ("paper", "bilstm"),
    "cnn_attention": ("paper", "attention"),
    "resnet": ("resnet", "none"),
    "resnet_lstm": ("resnet", "lstm"),
    "resnet_bilstm": ("resnet", "bilstm"),
    "resnet_attention": ("resnet", "attention"),
    "musicnn": ("musicnn", "none"),       # musicnn's penultimate features (pretrained), dense head
    "musicnn_lstm": ("musicnn", "lstm"),  # ... and the paper's LSTM over a track's windows
    "musicnn_attention": ("musicnn", "attention"),
}


IMPLEMENTATIONS = ("auto", "flax", "cpu_fast")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def uses_cpu_fast_path(implementation: str, backend: str | None = None) -> bool:
    """Whether the conv trunks run through jaxtag.models.ops (the CPU fast path: the same values and
    gradients as the plain Flax layers, faster on XLA:CPU). The one place this is chosen:
    "auto" takes it on a CPU backend only; "flax" and "cpu_fast" force one."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"model.implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "auto":
        return (backend or jax.default_backend()) == "cpu"
    return implementation == "cpu_fast"


def create_model(model_config, num_tags: int, input_stats: Mapping | None = None,
                 backend: str | None = None) -> TaggingNetwork:
    """Build the model named model_config.name. input_stats: {"mean", "std"} per mel bin (after
    compression) of the training split, used when model_config.normalize. backend: the platform
    the model will run on (default: JAX's default backend), for model.implementation="auto"."""
    name = model_config.name
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    trunk, temporal = MODELS[name]
    mean = std = None
    if model_config.get("normalize", False):
        if input_stats is None:
            raise ValueError("model.normalize needs the training split's input statistics")
        mean, std = tuple(map(float, input_stats["mean"])), tuple(map(float, input_stats["std"]))
    return TaggingNetwork(
        num_tags=num_tags, trunk=trunk, temporal=temporal,
        conv_channels=tuple(model_config.conv_channels), dense_sizes=tuple(model_config.dense_sizes),
        lstm_size=model_config.lstm_size, lstm_initial_state=model_config.lstm_initial_state,
        attention_heads=model_config.get("attention_heads", 4),
        output_activation=model_config.output_activation,
        compression=model_config.get("compression", "none"), log_scale=model_config.get("log_scale", 1e4),
        input_mean=mean, input_std=std, dtype=DTYPES[model_config.get("dtype", "float32")],
        cpu_fast=uses_cpu_fast_path(model_config.get("implementation", "auto"), backend),
        window_chunk=int(model_config.get("window_chunk", 0)),
        trunk_trainable=not model_config.get("freeze_trunk", False),
        trunk_layer=model_config.get("musicnn_layer", "penultimate"))


def pretrained_trunk(model_config) -> str | None:
    """The published model whose weights start the trunk ("musicnn-msd", ...), or None."""
    if MODELS.get(model_config.name, ("",))[0] != "musicnn":
        return None
    return model_config.get("pretrained", "musicnn-msd")


def to_probabilities(scores, output_activation: str) -> np.ndarray:
    """Model outputs as probabilities: sigmoid outputs pass through, logits get a sigmoid."""
    if output_activation == "none":
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, np.float64)))
    return np.asarray(scores)


class RunKeys(NamedTuple):
    init: jax.Array       # parameter initialisation
    step: jax.Array       # train steps (folded with the step number)
    inference: jax.Array  # a random LSTM initial state at validation, evaluation and tagging


def run_keys(seed: int) -> RunKeys:
    """The PRNG keys of a run, all from config.seed: one place, so training's validation,
    evaluation of a checkpoint and the tagger draw the same random LSTM initial state."""
    return RunKeys(*jax.random.split(jax.random.PRNGKey(seed), 3))
