"""Sections: the spans of a track where its character holds, from its stored window embeddings.

A track's windows are its *moments* as similar-moment search sees them (jaxtag.library.similarity:
the model's penultimate layer, whitened with the model's reference statistics, unit length). Change
points in that sequence are found with ruptures' kernel change-point detection (KernelCPD, solved
exactly by PELT with a penalty): a partition of the windows into sections minimising the sum, over
sections, of the windows' spread about their section's mean in the kernel's feature space, plus
`penalty` per section. A section is at least `min_seconds` long. The penalty is in seconds of
windows (a section must explain that much more of the track than it costs), so the same settings
suit any window hop.

Each section carries tags and moods: the decision policy's track decisions on the section's windows
alone (jaxtag.tagging.decisions: DecisionPolicy.decide), as if it were a track of its own: its
windows' tags as the track shows them, each tag's share of the section's time.

Sections, like decisions, come from what is stored (window times and embeddings, scores): other
settings or another decision rule re-derive them without the model. `SectionSettings.key()`
identifies the settings (a library record holds it beside the policy's).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math

import numpy as np

from jaxtag.tagging import vectors

# Chosen on two soundtracks' tracks joined in pairs at known seconds, flare-game and megaglest-data
# (scripts/real_music_report.py sections; docs/tagging.md "Sections"): the fewest boundaries on the
# tracks as they are with a boundary near every join; then measured on soundtracks not used to choose.
KERNEL = "linear"       # ruptures KernelCPD kernel: a section's cost is its windows' squared
                        # distances to their mean (unit vectors: the same as the cosine kernel)
GAMMA = 1.0             # the rbf kernel's exp(-gamma |x - y|^2), if chosen instead
PENALTY_SECONDS = 4.0   # a new section must reduce the cost by this many seconds' worth of windows
MIN_SECONDS = 9.0       # the shortest section (three of musicnn's 3-s windows)


@dataclasses.dataclass(frozen=True)
class SectionSettings:
    """How a track is cut into sections (see the module docstring)."""
    kernel: str = KERNEL
    gamma: float = GAMMA
    penalty_seconds: float = PENALTY_SECONDS
    min_seconds: float = MIN_SECONDS

    def __post_init__(self):
        if self.kernel not in ("rbf", "linear", "cosine"):
            raise ValueError(f"unknown kernel {self.kernel!r}: rbf, linear or cosine")
        if not (self.penalty_seconds > 0 and self.min_seconds > 0 and self.gamma > 0):
            raise ValueError("the penalty, the shortest section and gamma must be positive")

    def to_dict(self) -> dict:
        out = {"method": "ruptures KernelCPD (PELT) on whitened unit moment vectors", "kernel": self.kernel,
               "penalty_seconds": self.penalty_seconds, "min_seconds": self.min_seconds}
        if self.kernel == "rbf":
            out["gamma"] = self.gamma
        return out

    def key(self) -> str:
        """A hash of the settings: sections found with the same key from the same arrays are the same."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """The settings as a file's JSON shows them."""
        return {**self.to_dict(), "key": self.key()}


DEFAULT = SectionSettings()


@dataclasses.dataclass(frozen=True)
class Section:
    """A span of a track: seconds start..end (the windows' time partition: Taggram.bounds), windows
    first..last (inclusive), and the policy's decisions on those windows: tags and moods."""
    start_s: float
    end_s: float
    first_window: int
    last_window: int
    tags: list[str]
    moods: list[str]

    def to_dict(self) -> dict:
        return {"start": round(self.start_s, 3), "end": round(self.end_s, 3), "tags": list(self.tags),
                "moods": list(self.moods)}


@functools.lru_cache(maxsize=8)
def _whitening(model: str | None) -> vectors.Whitening:
    return vectors.model_whitening(model)


def moment_vectors(embeddings: np.ndarray, model: str | None) -> np.ndarray:
    """[W, D] the windows' unit vectors, whitened with the model's reference statistics where it
    has them (the similar-moment search's vectors: jaxtag.tagging.vectors)."""
    return vectors.moment_vectors(embeddings, _whitening(model))


def hop_seconds(start: np.ndarray, duration: float) -> float:
    """The windows' hop in seconds (the median step between window starts)."""
    start = np.asarray(start, np.float64)
    if len(start) >= 2:
        return float(max(np.median(np.diff(start)), 1e-3))
    return float(max(duration, 1e-3))


def change_points(vectors: np.ndarray, start: np.ndarray, duration: float,
                  settings: SectionSettings = DEFAULT) -> list[int]:
    """The windows where a new section begins (sorted; never 0): ruptures' KernelCPD with PELT
    on the moment vectors [W, D]. A track too short for two sections has none."""
    import ruptures
    vectors = np.asarray(vectors, np.float64)
    hop = hop_seconds(start, duration)
    min_size = max(1, math.ceil(settings.min_seconds / hop - 1e-9))
    if len(vectors) < 2 * min_size:
        return []
    params = {"gamma": settings.gamma} if settings.kernel == "rbf" else None
    algo = ruptures.KernelCPD(kernel=settings.kernel, min_size=min_size, params=params).fit(vectors)
    ends = algo.predict(pen=settings.penalty_seconds / hop)
    return [int(e) for e in ends[:-1]]


def sections_of(taggram, embeddings: np.ndarray, settings: SectionSettings = DEFAULT,
                cuts: list[int] | None = None) -> list[Section]:
    """A tagged track's sections (see the module docstring): `taggram` (its windows, scores and
    policy), `embeddings` [W, D] its stored window embeddings; `cuts`: change points found before
    (change_points), to decide them again under another policy without looking for them again."""
    if cuts is None:
        cuts = change_points(moment_vectors(embeddings, taggram.model), taggram.start, taggram.duration, settings)
    bounds = taggram.bounds()
    stretch = np.maximum(np.diff(np.clip(bounds, 0.0, taggram.duration)), 0.0)   # each window's seconds
    active = taggram.active
    edges = [0, *cuts, len(taggram.start)]
    out = []
    for first, stop in zip(edges[:-1], edges[1:]):
        # The section's window tags are the track's (smoothed over the whole track), and each tag's
        # share is of the section's time, as a track's is of the track's (Taggram.time_on).
        seconds = stretch[first:stop]
        share = (seconds[:, None] * active[first:stop]).sum(axis=0) / max(float(seconds.sum()), 1e-9)
        d = taggram.policy.decide(taggram.scores[first:stop], share=share, active=active[first:stop])
        out.append(Section(float(bounds[first]), float(bounds[stop]), first, stop - 1, list(d.track_tags),
                           list(d.moods)))
    return out


def section_windows(vectors: np.ndarray, start: np.ndarray, duration: float, number: int,
                    settings: SectionSettings = DEFAULT) -> tuple[int, int]:
    """(first, stop) windows of section `number` (1 = the first) of a track's moment vectors."""
    edges = [0, *change_points(vectors, start, duration, settings), len(vectors)]
    if not 1 <= number < len(edges):
        raise ValueError(f"no section {number}: the track has {len(edges) - 1} (numbered from 1)")
    return edges[number - 1], edges[number]
