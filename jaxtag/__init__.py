"""jaxtag: learn time-varying semantic tags from music audio with JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported on first use: `import jaxtag` stays cheap, and the tagger needs no TensorFlow.
    if name == "Tagger":
        from jaxtag.tagging.tagger import Tagger
        return Tagger
    if name == "Taggram":
        from jaxtag.tagging.taggram import Taggram
        return Taggram
    raise AttributeError(f"module 'jaxtag' has no attribute {name!r}")
