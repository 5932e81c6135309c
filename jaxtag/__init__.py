"""jaxtag: learn time-varying semantic tags from music audio with JAX/Flax."""

__version__ = "0.1.0"
