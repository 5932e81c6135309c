"""Models, picked by name from one registry: name -> (window trunk, temporal model)."""
from __future__ import annotations

from typing import Mapping

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
}


def create_model(model_config, num_tags: int, input_stats: Mapping | None = None) -> TaggingNetwork:
    """Build the model named model_config.name. input_stats: {"mean", "std"} per mel bin (after
    compression) of the training split, used when model_config.normalize."""
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
        window_chunk=model_config.get("window_chunk", 0),
        output_activation=model_config.output_activation,
        compression=model_config.get("compression", "none"), log_scale=model_config.get("log_scale", 1e4),
        input_mean=mean, input_std=std)


def to_probabilities(scores, output_activation: str) -> np.ndarray:
    """Model outputs as probabilities: sigmoid outputs pass through, logits get a sigmoid."""
    if output_activation == "none":
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, np.float64)))
    return np.asarray(scores)
