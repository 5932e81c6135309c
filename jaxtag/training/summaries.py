"""TensorBoard event files via tf.summary (TensorFlow is already a dependency)."""
from __future__ import annotations

import os

import jax


class SummaryWriter:
    def __init__(self, logdir: str):
        import tensorflow as tf
        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)

    def scalars(self, values: dict[str, float], step: int) -> None:
        with self._writer.as_default():
            for name, value in values.items():
                self._tf.summary.scalar(name, value, step=step)
        self._writer.flush()


def summary_writer(workdir: str) -> SummaryWriter | None:
    """<workdir>/tensorboard on process 0; None on the others (only process 0 writes logs)."""
    if jax.process_index() != 0:
        return None
    return SummaryWriter(os.path.join(workdir, "tensorboard"))
