"""A taggram: per-window tag scores over time for one piece of audio, and its exports."""
from __future__ import annotations

import dataclasses
import json

import numpy as np


@dataclasses.dataclass
class Taggram:
    """source: file path or "<waveform>"; start/end: window times in seconds [W]; scores [W, C] in
    [0, 1]; threshold [C]. A window's tags are those with score >= threshold."""
    source: str
    duration: float
    tags: list[str]
    start: np.ndarray
    end: np.ndarray
    scores: np.ndarray
    threshold: np.ndarray
    model: str = ""
    # Peak envelope of the waveform for plots: [n_bins, 2] (min, max) over equal time bins.
    envelope: np.ndarray | None = None

    @property
    def active(self) -> np.ndarray:
        return self.scores >= self.threshold[None, :]

    @property
    def centres(self) -> np.ndarray:
        return (self.start + self.end) / 2

    def smoothed(self, k: int) -> "Taggram":
        """Median filter of width k (odd) over windows, per tag; edges use the nearest windows."""
        if k <= 1:
            return self
        if k % 2 == 0:
            raise ValueError(f"the smoothing width must be odd, got {k}")
        half = k // 2
        padded = np.pad(self.scores, ((half, half), (0, 0)), mode="edge")
        stacked = np.stack([padded[i:i + len(self.scores)] for i in range(k)])
        return dataclasses.replace(self, scores=np.median(stacked, axis=0).astype(self.scores.dtype))

    def segments(self) -> list[tuple[float, float, np.ndarray]]:
        """Non-overlapping segments covering [0, duration]: each instant takes the tags of the window
        whose centre is nearest; consecutive windows with identical tags are merged."""
        centres = self.centres
        bounds = np.r_[0.0, (centres[:-1] + centres[1:]) / 2, self.duration]
        active = self.active
        out = []
        for k in range(len(centres)):
            if out and np.array_equal(out[-1][2], active[k]):
                out[-1] = (out[-1][0], bounds[k + 1], out[-1][2])
            else:
                out.append((bounds[k], bounds[k + 1], active[k]))
        return [(float(s), float(e), a) for s, e, a in out if e > s]

    def to_csv(self) -> str:
        """Segments in the CAL500exp CSV layout: Start_Time, End_Time, one 0/1 column per tag."""
        lines = [",".join(["Start_Time", "End_Time", *self.tags])]
        for s, e, a in self.segments():
            lines.append(",".join([f"{s:.6f}", f"{e:.6f}"] + [f"{float(v):.6f}" for v in a]))
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        active = self.active
        return {
            "file": self.source, "duration": float(self.duration), "model": self.model,
            "tags": list(self.tags), "threshold": [float(t) for t in self.threshold],
            "windows": [{"start": float(s), "end": float(e), "scores": [round(float(x), 6) for x in sc],
                         "tags": [t for t, on in zip(self.tags, act) if on]}
                        for s, e, sc, act in zip(self.start, self.end, self.scores, active)],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def top_tags(self, n: int) -> list[tuple[str, float]]:
        """The n tags with the highest mean score over the file."""
        mean = self.scores.mean(axis=0)
        order = np.argsort(-mean)[:n]
        return [(self.tags[i], float(mean[i])) for i in order]


def peak_envelope(y: np.ndarray, n_bins: int = 2000) -> np.ndarray:
    """(min, max) of the waveform over n_bins equal stretches: [n_bins, 2]."""
    y = np.asarray(y, np.float32)
    return reduce_envelope(y, y, n_bins)


def reduce_envelope(lows: np.ndarray, highs: np.ndarray, n_bins: int = 2000) -> np.ndarray:
    """(min of lows, max of highs) over n_bins equal stretches of them: [n_bins, 2]. (A waveform's
    peak envelope, or a finer envelope's, coarser.)"""
    n_bins = max(1, min(n_bins, len(lows)))
    edges = np.linspace(0, len(lows), n_bins + 1).astype(int)[:-1]
    return np.stack([np.minimum.reduceat(lows, edges), np.maximum.reduceat(highs, edges)], axis=1)
