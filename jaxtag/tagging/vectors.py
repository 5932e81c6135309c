"""Window embeddings as vectors to compare: a moment is one window's embedding (the model's
penultimate layer), whitened with the model's reference statistics (the mean and covariance of the
calibration set's window embeddings, shipped beside the decision statistics), unit length; a track
(or a section) is the mean of its moments, unit length. Used by similar-track and moment search
(jaxtag.library.similarity) and by the sections (jaxtag.tagging.sections). A model without
reference statistics (a trained run) uses its embeddings as they are.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

WHITENING_SHRINK = 0.01        # eigenvalues + this x their mean: noise directions are not blown up


@dataclasses.dataclass(frozen=True)
class Whitening:
    """x -> (x - mean) @ projection, the reference statistics' whitening (identity without them)."""
    mean: np.ndarray | None = None
    projection: np.ndarray | None = None
    source: str = "none: the embeddings as they are"

    def key(self) -> str:
        """A hash of the metric itself (its mean and projection, the shrinkage within it): an index
        built with another key compares other vectors."""
        import hashlib
        digest = hashlib.sha256()
        for array in (self.mean, self.projection):
            digest.update(b"-" if array is None else np.ascontiguousarray(array, np.float64).tobytes())
        return digest.hexdigest()[:16]

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, np.float64)
        if self.mean is not None:
            x = (x - self.mean) @ self.projection
        return x.astype(np.float32)


def whitening_from(mean: np.ndarray, covariance: np.ndarray, source: str = "") -> Whitening:
    values, vectors = np.linalg.eigh(np.asarray(covariance, np.float64))
    values = np.maximum(values, 0.0)
    scale = 1.0 / np.sqrt(values + WHITENING_SHRINK * values.mean())
    return Whitening(np.asarray(mean, np.float64), vectors * scale[None, :], source)


def embedding_reference_path(model: str) -> str:
    from jaxtag.tagging.decisions import CALIBRATION_DIR
    return os.path.join(CALIBRATION_DIR, f"{model}.embeddings.npz")


def model_whitening(model: str | None) -> Whitening:
    """The shipped whitening of a pretrained model's embeddings; the identity for other models."""
    if model:
        try:
            with np.load(embedding_reference_path(model), allow_pickle=False) as npz:
                return whitening_from(npz["mean"], npz["covariance"], f"{model}'s reference statistics")
        except FileNotFoundError:
            pass
    return Whitening()


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def moment_vectors(embeddings: np.ndarray, whitening: Whitening) -> np.ndarray:
    """[W, D] unit vectors of a file's windows."""
    return unit(whitening(embeddings))


def track_vector(moments: np.ndarray) -> np.ndarray:
    """A track's unit vector from its moments' unit vectors."""
    return unit(np.asarray(moments, np.float64).mean(axis=0))
