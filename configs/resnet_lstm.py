"""Residual trunk + the paper's LSTM over windows (see improved.py)."""
from configs import improved


def get_config():
    config = improved.get_config()
    config.model.name = "resnet_lstm"
    return config
