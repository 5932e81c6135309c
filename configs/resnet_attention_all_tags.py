"""resnet_attention trained on all 67 CAL500exp tags; metrics are reported per category."""
from configs import improved


def get_config():
    config = improved.get_config()
    config.data.tags = "all"
    return config
