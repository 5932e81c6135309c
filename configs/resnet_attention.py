"""Residual trunk + self-attention over a track's windows (see improved.py)."""
from configs import improved


def get_config():
    return improved.get_config()
