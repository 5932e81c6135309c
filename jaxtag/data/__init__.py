"""Data: CAL500exp tracks -> mel frames -> labelled long-term windows -> tf.data (paper 2-3).

Submodules audio, features, labels and corpus need no TensorFlow; the tf.data entry points
below import it on first use, so the tagger stays light.
"""


def load_split(config, split, **kwargs):
    """One example per track of `split`; see jaxtag.data.pipeline.load_split."""
    from jaxtag.data import pipeline
    return pipeline.load_split(config, split, **kwargs)


def prepare(config):
    """Build the prepared dataset if needed and return its TFDS builder."""
    from jaxtag.data import pipeline
    return pipeline.prepare(config)
