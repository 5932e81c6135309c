"""A taggram: per-window tag scores over time for one piece of audio, and its exports."""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np

from jaxtag.tagging import sections as sections_lib
from jaxtag.tagging.decisions import DecisionPolicy, TrackDecisions
from jaxtag.tagging.tempo import Tempo


@dataclasses.dataclass
class Taggram:
    """source: the file's path as shown (or "<waveform>"); start/end: window times in seconds [W];
    scores [W, C] in [0, 1], as the model gave them; policy: how scores become tags
    (jaxtag.tagging.decisions), asked by every output; embeddings [W, D]: the model's penultimate
    layer, where known, from which its sections are found with `sectioning`
    (jaxtag.tagging.sections)."""
    source: str
    duration: float
    tags: list[str]
    start: np.ndarray
    end: np.ndarray
    scores: np.ndarray
    policy: DecisionPolicy
    model: str = ""
    # Peak envelope of the waveform for plots: [n_bins, 2] (min, max) over equal time bins.
    envelope: np.ndarray | None = None
    tempo: Tempo | None = None   # per window and for the track (jaxtag.tagging.tempo)
    embeddings: np.ndarray | None = None
    sectioning: sections_lib.SectionSettings = sections_lib.DEFAULT

    @property
    def threshold(self) -> np.ndarray:
        return self.policy.thresholds

    @property
    def active(self) -> np.ndarray:
        """Which tags are on in each window [W, C] (the policy's thresholds, smoothed)."""
        return self.policy.active(self.scores)

    @property
    def centres(self) -> np.ndarray:
        return (self.start + self.end) / 2

    def smoothed(self, k: int) -> "Taggram":
        """The same scores, with each tag's on/off median-filtered over k windows (odd)."""
        return dataclasses.replace(self, policy=self.policy.replace(smooth=k))

    def with_policy(self, policy: DecisionPolicy) -> "Taggram":
        return dataclasses.replace(self, policy=policy)

    def bounds(self) -> np.ndarray:
        """[W + 1] times (s): each instant belongs to the window whose centre is nearest, so window
        k covers bounds[k]..bounds[k + 1] (the segments, the picture and the listening page)."""
        return window_bounds(self.start, self.end, self.duration)

    def segments(self, active: np.ndarray | None = None) -> list[tuple[float, float, np.ndarray]]:
        """Non-overlapping segments covering [0, duration]: each instant takes the tags of the window
        whose centre is nearest; consecutive windows with identical tags are merged."""
        bounds = self.bounds()
        active = self.active if active is None else active
        out = []
        for k in range(len(active)):
            if out and np.array_equal(out[-1][2], active[k]):
                out[-1] = (out[-1][0], bounds[k + 1], out[-1][2])
            else:
                out.append((bounds[k], bounds[k + 1], active[k]))
        return [(float(s), float(e), a) for s, e, a in out if e > s]

    def time_on(self, active: np.ndarray | None = None) -> np.ndarray:
        """Each tag's share of the file's time during which it is on [C] (the time partition of
        `segments`: each instant takes the window centred nearest to it)."""
        active = self.active if active is None else active
        bounds = np.clip(self.bounds(), 0.0, self.duration)
        stretch = np.maximum(np.diff(bounds), 0.0)
        return (stretch[:, None] * active).sum(axis=0) / max(self.duration, 1e-9)

    @functools.cached_property
    def _section_cuts(self) -> list[int]:
        # The change points depend on the embeddings and the settings only, not on the policy
        # (a Taggram with another policy is a new object: dataclasses.replace).
        vectors = sections_lib.moment_vectors(self.embeddings, self.model)
        return sections_lib.change_points(vectors, self.start, self.duration, self.sectioning)

    def sections(self) -> list[sections_lib.Section] | None:
        """The track's sections (jaxtag.tagging.sections), each with the policy's tags and moods
        for its windows; None where the embeddings are not known."""
        if self.embeddings is None:
            return None
        return sections_lib.sections_of(self, self.embeddings, self.sectioning, cuts=self._section_cuts)

    def sections_csv(self) -> str | None:
        """The sections as CSV: start, end (seconds), tags, moods ("; "-separated); None where
        they are not known."""
        found = self.sections()
        if found is None:
            return None
        import csv
        import io
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["start", "end", "tags", "moods"])
        for section in found:
            writer.writerow([f"{section.start_s:.3f}", f"{section.end_s:.3f}", "; ".join(section.tags),
                             "; ".join(section.moods)])
        return text.getvalue()

    def decisions(self) -> TrackDecisions:
        """The policy's decisions for this track: window tags, time on, track tags, moods, top tags."""
        active = self.active
        return self.policy.decide(self.scores, share=self.time_on(active), active=active)

    def to_csv(self) -> str:
        """Segments in the CAL500exp CSV layout: Start_Time, End_Time, one 0/1 column per tag."""
        lines = [",".join(["Start_Time", "End_Time", *self.tags])]
        for s, e, a in self.segments():
            lines.append(",".join([f"{s:.6f}", f"{e:.6f}"] + [f"{float(v):.6f}" for v in a]))
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict:
        d = self.decisions()
        bpm = self.tempo.windows if self.tempo is not None else np.full(len(self.start), np.nan)
        out = {
            "file": self.source, "duration": float(self.duration), "model": self.model,
            "tags": list(self.tags), "threshold": [float(t) for t in self.threshold],
            "decisions": self.policy.describe(), "track_tags": d.track_tags, "moods": d.moods,
            "top_tags": [[t, round(s, 4)] for t, s in d.top_tags],
            "tempo": self.tempo.to_dict() if self.tempo is not None else None,
            "sections": None, "sectioning": self.sectioning.describe(),
            "windows": [{"start": float(s), "end": float(e), "scores": [round(float(x), 6) for x in sc],
                         "tags": [t for t, on in zip(self.tags, act) if on],
                         "bpm": round(float(b), 1) if np.isfinite(b) else None}
                        for s, e, sc, act, b in zip(self.start, self.end, self.scores, d.active, bpm)],
        }
        found = self.sections()
        if found is not None:
            out["sections"] = [section.to_dict() for section in found]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def top_tags(self, n: int) -> list[tuple[str, float]]:
        """The n tags the track carries most strongly, by the strength of its decisions (the mean
        score, the share of its time a tag is on, or the share of reference tracks scoring lower:
        jaxtag.tagging.decisions)."""
        return self.policy.top_tags(self.scores, n, strength=self.decisions().strength)


def _midpoints(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """[W - 1] times halfway between consecutive window centres: where one window hands over."""
    c = (np.asarray(start, np.float64) + np.asarray(end, np.float64)) / 2
    return (c[:-1] + c[1:]) / 2


def window_bounds(start: np.ndarray, end: np.ndarray, duration: float) -> np.ndarray:
    """[W + 1] times (s) where each window's stretch begins, and the end (Taggram.bounds)."""
    return np.r_[0.0, _midpoints(start, end), duration]


def window_at(start: np.ndarray, end: np.ndarray, seconds: float) -> int:
    """The window an instant belongs to (Taggram.bounds: the nearest centre; a tie goes to the later)."""
    return int(np.searchsorted(_midpoints(start, end), seconds, side="right"))


def read_taggram(path: str) -> Taggram:
    """A file's taggram from its JSON (NAME.json), this version's or an earlier one's. Its window
    decisions are those the file shows: its per-tag thresholds and smoothing (a file written
    before decisions had a home has neither smoothing nor a "decisions" entry)."""
    from jaxtag.tagging.decisions import threshold_policy
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    windows = data["windows"]
    smooth = int((data.get("decisions") or {}).get("smooth", 1))
    policy = threshold_policy(data["tags"], data["threshold"], smooth=smooth,
                              origin=f"the thresholds in {os.path.basename(path)}")
    as_array = lambda key: np.array([w[key] for w in windows], np.float64)
    return Taggram(source=data["file"], duration=float(data["duration"]), tags=list(data["tags"]),
                   start=as_array("start"), end=as_array("end"),
                   scores=np.array([w["scores"] for w in windows], np.float32).reshape(len(windows), -1),
                   policy=policy, model=data.get("model", ""))


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
