"""Data: CAL500exp tracks -> mel frames -> labelled long-term windows -> tf.data (paper 2-3).

audio, features, labels, tags and corpus need no TensorFlow (the tagger uses them); pipeline (the
prepared dataset and tf.data: `pipeline.prepare`, `pipeline.load_split`) imports it.
"""
