"""The paper's CNN-only model (section 4.1)."""
from configs import default


def get_config():
    config = default.get_config()
    config.model.name = "cnn"
    return config
