"""Models, picked by name from one registry."""
from __future__ import annotations

import flax.linen as nn
import numpy as np

from jaxtag.models.cnn import CNN, CNNLSTM

MODELS = {"cnn": CNN, "cnn_lstm": CNNLSTM}


def create_model(model_config, num_tags: int) -> nn.Module:
    """Build the model named model_config.name with the fields it defines."""
    name = model_config.name
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    cls = MODELS[name]
    kwargs = {"num_tags": num_tags, "conv_channels": tuple(model_config.conv_channels),
              "dense_sizes": tuple(model_config.dense_sizes),
              "output_activation": model_config.output_activation}
    if name == "cnn_lstm":
        kwargs.update(lstm_size=model_config.lstm_size, lstm_initial_state=model_config.lstm_initial_state)
    return cls(**kwargs)


def to_probabilities(scores, output_activation: str) -> np.ndarray:
    """Model outputs as probabilities: sigmoid outputs pass through, logits get a sigmoid."""
    if output_activation == "none":
        return 1.0 / (1.0 + np.exp(-np.asarray(scores, np.float64)))
    return np.asarray(scores)
