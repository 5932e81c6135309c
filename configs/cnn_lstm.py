"""The paper's CNN+LSTM (section 4.2)."""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "cnn_lstm"
    return config
