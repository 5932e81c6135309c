"""Tag decisions in one place: which tags are on in each window, and which tags and moods a whole
track carries. Every output (the JSON's window tags, the CSV segments, the taggram's marks, the
listening page, the library's rows and page, the tags written into files) asks a DecisionPolicy,
and a policy works on stored scores, so changing it never needs the model again.

Three rules:

- "threshold" (trained runs, and any model with --threshold): a tag is on in a window where its
  score reaches the tag's threshold (a trained run's validation-tuned thresholds, or
  eval.threshold); a track carries the tags on for at least `track_share` of its time.
- "evidence" (the pretrained models, by default): a tag is on in a window only where the model's
  evidence for it is real and distinctive. Real: the window's odds for the tag are at least
  `ratio` times the tag's base odds (EVIDENCE_LEVELS, per model), the model's mean probability for it over real
  recordings (jaxtag/tagging/calibration/, made by scripts/real_music_report.py). Distinctive: its
  log-odds also lie at least `WINDOW_Z` standard deviations above the tag's mean over the reference
  windows. Both are per-tag thresholds on the score; the higher one holds. A track carries the tags
  that are on for at least `track_share` of its time (at most `max_track_tags`), its moods the mood
  tags on for at least `mood_share` (at most `max_moods`; a mood is a track tag too). Nothing is
  forced on: a window or a track may have no tag and no mood.
- "calibrated" (the rule before "evidence", kept for comparison: scripts/real_music_report.py
  precision): the same window level without the base rate, and a track judged by its mean log-odds
  per tag in reference standard deviations (z): it carries the tags where z >= `track_z` (at most
  `max_track_tags`), its strongest tags with z >= `lean_z` up to `min_track_tags`, and moods with
  z >= `lean_z`.

Every rule then median-filters each tag's on/off over `smooth` windows (the same as thresholding
median-filtered scores, since the threshold is monotone), and ranks a track's tags by strength: the
mean score (threshold rule), the share of the track's time the tag is on, ties broken by the mean
score (evidence rule), or the share of reference tracks that score lower on that tag, under a
normal fit (calibrated rule).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Sequence

import numpy as np

from jaxtag.data.tags import is_mood

THRESHOLD, EVIDENCE, CALIBRATED = "threshold", "evidence", "calibrated"
# A tag belongs to the whole track when it is on for at least this share of the track's time
# (threshold rule).
TRACK_TAG_SHARE = 0.5
TOP_TAGS = 5
LOGIT_CLIP = 1e-6   # scores are clipped to [1e-6, 1 - 1e-6] before log-odds

# The evidence rule's levels, per model (chosen on the calibration collections only, by their weak
# labels, each collection judged by statistics made from the others: scripts/real_music_report.py
# levels; docs/decisions.md):
@dataclasses.dataclass(frozen=True)
class EvidenceLevels:
    ratio: float = 2.0             # a window's odds for a tag at least this many times the tag's base odds
    min_base_rate: float = 0.15    # no tag's base rate is taken below this (see evidence_policy) ...
    min_mood_base_rate: float = 0.0   # ... nor a mood's below this
    track_share: float = 0.25      # a track's tag: on for at least this share of its time
    mood_share: float = 0.1        # a track's mood: on for at least this share of its time


# A model whose levels differ from the defaults is named here; the same criteria picked the same
# levels for musicnn-msd, musicnn-mtt and musicnn.
EVIDENCE_LEVELS: dict[str, EvidenceLevels] = {}
DEFAULT_EVIDENCE_LEVELS = EvidenceLevels()
MOOD_SHARE = DEFAULT_EVIDENCE_LEVELS.mood_share

# The calibrated rule's levels, in reference standard deviations of log-odds (chosen on the
# reference collections by leaving each collection out in turn); the window level serves the
# evidence rule too:
WINDOW_Z = 1.28     # a window's tag: about the top tenth of reference windows (normal fit)
TRACK_Z = 1.0       # a track's tag: distinctly high, about the top sixth of reference tracks
LEAN_Z = 0.5        # a track leans that way: about the top third (moods; the second tag)
MAX_TRACK_TAGS = 5
MIN_TRACK_TAGS = 2  # a track's strongest tags are kept up to this many where it leans to them
MAX_MOODS = 2


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p / (1 - p))


def median_filter_on(active: np.ndarray, k: int) -> np.ndarray:
    """Median filter of width k (odd) over windows of a boolean [W, C]: on where most of the k
    windows around are on; edges repeat the nearest window (as a median filter of the scores
    with edge padding, then thresholded)."""
    if k <= 1 or len(active) == 0:
        return active
    half = k // 2
    padded = np.pad(active.astype(np.int32), ((half, half), (0, 0)), mode="edge")
    sums = np.cumsum(np.pad(padded, ((1, 0), (0, 0))), axis=0)
    return (sums[k:] - sums[:-k]) > half


@dataclasses.dataclass(frozen=True)
class TrackDecisions:
    """A track's decisions: active [W, C] (after smoothing), share [C] (of the track's time on),
    strength [C] (the ranking value), and the track's tags, moods and top tags (tag, strength)."""
    active: np.ndarray
    share: np.ndarray
    strength: np.ndarray
    track_tags: list[str]
    moods: list[str]
    top_tags: list[tuple[str, float]]


@dataclasses.dataclass(frozen=True, eq=False)
class DecisionPolicy:
    """How scores become tags (see the module docstring). Build one with `threshold_policy` or
    `calibrated_policy`; `key` identifies it (a library record holds it beside the model's)."""
    tags: tuple[str, ...]
    thresholds: np.ndarray                 # [C]: a window's tag is on where score >= threshold
    rule: str = THRESHOLD
    smooth: int = 1
    moods: tuple[str, ...] = ()            # which of the tags are moods
    track_share: float = TRACK_TAG_SHARE   # threshold and evidence rules
    mood_share: float = MOOD_SHARE         # evidence rule
    base_rate: np.ndarray | None = None    # evidence rule: the tags' base rates [C] (where thresholds come from)
    evidence_ratio: float | None = None    # evidence rule: the odds ratio the thresholds ask for
    track_mean: np.ndarray | None = None   # calibrated rule: reference track means of log-odds [C]
    track_std: np.ndarray | None = None    # ... and their standard deviations [C]
    track_z: float = TRACK_Z
    lean_z: float = LEAN_Z
    min_track_tags: int = 0
    max_track_tags: int | None = None      # None: every tag that qualifies
    max_moods: int | None = None
    origin: str = ""                       # where the thresholds come from, in words

    def __post_init__(self):
        n = len(self.tags)
        object.__setattr__(self, "thresholds", np.asarray(self.thresholds, np.float32).reshape(-1))
        if len(self.thresholds) != n:
            raise ValueError(f"{len(self.thresholds)} thresholds for {n} tags")
        if self.smooth < 1 or self.smooth % 2 == 0:
            raise ValueError(f"the smoothing width must be an odd number of windows >= 1, got {self.smooth}")
        if self.rule not in (THRESHOLD, EVIDENCE, CALIBRATED):
            raise ValueError(f"unknown decision rule {self.rule!r}")
        if self.rule == CALIBRATED:
            for name in ("track_mean", "track_std"):
                value = np.asarray(getattr(self, name), np.float64).reshape(-1)
                if len(value) != n:
                    raise ValueError(f"{name} has {len(value)} values for {n} tags")
                object.__setattr__(self, name, value)
        if self.base_rate is not None:
            object.__setattr__(self, "base_rate", np.asarray(self.base_rate, np.float64).reshape(-1))
            if len(self.base_rate) != n:
                raise ValueError(f"{len(self.base_rate)} base rates for {n} tags")
        unknown = [m for m in self.moods if m not in self.tags]
        if unknown:
            raise ValueError(f"moods {unknown} are not among the tags")

    # -- identity ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Everything that decides (JSON-able, rounded so that equal policies give equal keys)."""
        r = lambda v: None if v is None else [round(float(x), 6) for x in v]
        out = {"rule": self.rule, "tags": list(self.tags), "thresholds": r(self.thresholds), "smooth": self.smooth,
               "moods": list(self.moods), "max_track_tags": self.max_track_tags, "max_moods": self.max_moods}
        if self.rule == THRESHOLD:
            out["track_share"] = self.track_share
        elif self.rule == EVIDENCE:
            out.update(track_share=self.track_share, mood_share=self.mood_share)
        else:
            out.update(track_mean=r(self.track_mean), track_std=r(self.track_std), track_z=self.track_z,
                       lean_z=self.lean_z, min_track_tags=self.min_track_tags)
        return out

    def key(self) -> str:
        """A hash of the policy: outputs derived with the same key from the same scores are the same."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        """The policy as a file's JSON shows it (its thresholds are in the file already)."""
        out = {"rule": self.rule, "origin": self.origin, "smooth": self.smooth, "key": self.key()}
        if self.rule == THRESHOLD:
            out["track_share"] = self.track_share
        elif self.rule == EVIDENCE:
            out.update(evidence_ratio=self.evidence_ratio, window_z=WINDOW_Z, track_share=self.track_share,
                       mood_share=self.mood_share, max_track_tags=self.max_track_tags, max_moods=self.max_moods,
                       base_rate=None if self.base_rate is None else [round(float(b), 6) for b in self.base_rate])
        else:
            out.update(window_z=WINDOW_Z, track_z=self.track_z, lean_z=self.lean_z,
                       min_track_tags=self.min_track_tags, max_track_tags=self.max_track_tags,
                       max_moods=self.max_moods)
        return out

    def replace(self, **changes) -> "DecisionPolicy":
        return dataclasses.replace(self, **changes)

    def with_threshold(self, threshold: float) -> "DecisionPolicy":
        """One threshold for every tag (--threshold): the threshold rule, whatever the policy was."""
        return self.replace(rule=THRESHOLD, thresholds=np.full(len(self.tags), threshold, np.float32),
                            track_mean=None, track_std=None, base_rate=None, min_track_tags=0, max_track_tags=None,
                            max_moods=None, track_share=TRACK_TAG_SHARE,
                            origin=f"--threshold={threshold:g} for every tag")

    # -- decisions ---------------------------------------------------------------------------

    def active(self, scores: np.ndarray) -> np.ndarray:
        """Which tags are on in each window [W, C] (smoothed)."""
        scores = np.asarray(scores)
        return median_filter_on(scores >= self.thresholds[None, :], self.smooth)

    def strength(self, scores: np.ndarray) -> np.ndarray:
        """Per tag, how strongly the track carries it [C]: the mean score (threshold rule), the share
        of its windows on (evidence rule), or the share of reference tracks scoring lower
        (calibrated rule)."""
        scores = np.asarray(scores, np.float64)
        if self.rule == THRESHOLD:
            return scores.mean(axis=0)
        if self.rule == EVIDENCE:
            return self.active(scores).mean(axis=0) if len(scores) else np.zeros(len(self.tags))
        return _normal_cdf(self.track_z_scores(scores))

    def top_tags(self, scores: np.ndarray, n: int = TOP_TAGS,
                 strength: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The n tags the track carries most strongly, with their strength (default: strength();
        a Taggram gives its time-based one)."""
        strength = self.strength(scores) if strength is None else np.asarray(strength, np.float64)
        return [(self.tags[i], float(strength[i])) for i in self._order(scores, strength)[:n]]

    def _order(self, scores: np.ndarray, strength: np.ndarray) -> np.ndarray:
        """The tags from the strongest; the evidence rule breaks ties of time on (equal to 1e-9: sums
        of window stretches differ in their last bits) by the mean score."""
        if self.rule == EVIDENCE:
            return np.lexsort((-np.asarray(scores, np.float64).mean(axis=0), -np.round(strength, 9)))
        return np.argsort(-strength, kind="stable")

    def track_z_scores(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated rule: the track's mean log-odds per tag, in reference standard deviations
        above the reference tracks' mean [C]."""
        return (logit(scores).mean(axis=0) - self.track_mean) / self.track_std

    def decide(self, scores: np.ndarray, share: np.ndarray | None = None,
               active: np.ndarray | None = None) -> TrackDecisions:
        """A track's decisions from its window scores [W, C]. `share` [C]: the share of the track's
        time each tag is on (Taggram.time_on), default the share of its windows."""
        active = self.active(scores) if active is None else active
        share = active.mean(axis=0) if share is None else np.asarray(share, np.float64)
        strength = share if self.rule == EVIDENCE else self.strength(scores)
        order = self._order(scores, strength)
        mood_set = set(self.moods)
        if self.rule == THRESHOLD:
            track_tags = [self.tags[i] for i in order if share[i] >= self.track_share]
            moods = [t for t in track_tags if t in mood_set]
        elif self.rule == EVIDENCE:
            tag_ids = [i for i in order if share[i] >= self.track_share][:self.max_track_tags]
            mood_ids = [i for i in order if share[i] >= self.mood_share and self.tags[i] in mood_set][:self.max_moods]
            track_tags = [self.tags[i] for i in order if i in tag_ids or i in mood_ids]
            moods = [self.tags[i] for i in mood_ids]
        else:
            z = self.track_z_scores(scores)
            distinct = [i for i in order if z[i] >= self.track_z][:self.max_track_tags]
            leaning = [i for i in order if self.lean_z <= z[i] < self.track_z]
            chosen = set(distinct + leaning[:max(0, self.min_track_tags - len(distinct))])
            mood_ids = [i for i in order if z[i] >= self.lean_z and self.tags[i] in mood_set][:self.max_moods]
            # A mood is a tag the track carries too (in strength order among the others).
            track_tags = [self.tags[i] for i in order if i in chosen or i in mood_ids]
            moods = [self.tags[i] for i in mood_ids]
        return TrackDecisions(active=active, share=share, strength=strength, track_tags=track_tags, moods=moods,
                              top_tags=[(self.tags[i], float(strength[i])) for i in order[:TOP_TAGS]])


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.vectorize(math.erf)(np.asarray(z, np.float64) / math.sqrt(2)))


def threshold_policy(tags: Sequence[str], thresholds, smooth: int = 1, origin: str = "") -> DecisionPolicy:
    """The threshold rule: per-tag (or one) thresholds; track tags on for half the track or more."""
    tags = tuple(tags)
    thresholds = np.broadcast_to(np.asarray(thresholds, np.float32), (len(tags),))
    return DecisionPolicy(tags=tags, thresholds=thresholds, rule=THRESHOLD, smooth=smooth,
                          moods=tuple(t for t in tags if is_mood(t)), origin=origin)


# -- the calibrated rule's reference statistics ------------------------------------------------

CALIBRATION_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration")
STAT_DECIMALS = 6   # per-track summaries are stored rounded; the statistics are computed from those


def summarise_track(scores: np.ndarray) -> dict:
    """What the reference statistics keep of one reference track: its window count and, per tag,
    the mean of its windows' probabilities and the mean and the mean square of their log-odds
    (rounded to STAT_DECIMALS)."""
    z = logit(scores)
    r = lambda v: [round(float(x), STAT_DECIMALS) for x in v]
    return {"windows": int(len(z)), "prob_mean": r(np.asarray(scores, np.float64).mean(axis=0)),
            "logit_mean": r(z.mean(axis=0)), "logit_sq_mean": r((z ** 2).mean(axis=0))}


def reference_statistics(tracks: Sequence[dict]) -> dict:
    """Per tag, from per-track summaries (summarise_track): the mean and standard deviation of
    log-odds over all windows pooled ("window") and of the tracks' mean log-odds ("track"), and the
    base rate: the mean probability over all windows pooled."""
    n = np.array([t["windows"] for t in tracks], np.float64)
    mean = np.array([t["logit_mean"] for t in tracks], np.float64)
    square = np.array([t["logit_sq_mean"] for t in tracks], np.float64)
    window_mean = (n[:, None] * mean).sum(0) / n.sum()
    window_var = (n[:, None] * square).sum(0) / n.sum() - window_mean ** 2
    r = lambda v: [round(float(x), STAT_DECIMALS) for x in v]
    out = {"tracks": len(tracks), "windows": int(n.sum()),
           "window_mean": r(window_mean), "window_std": r(np.sqrt(np.maximum(window_var, 0))),
           "track_mean": r(mean.mean(0)), "track_std": r(mean.std(0))}
    if all("prob_mean" in t for t in tracks):
        prob = np.array([t["prob_mean"] for t in tracks], np.float64)
        out["base_rate"] = r((n[:, None] * prob).sum(0) / n.sum())
    return out


def reference_path(model: str) -> str:
    return os.path.join(CALIBRATION_DIR, f"{model}.json")


def load_reference(model: str) -> dict | None:
    """The shipped reference statistics of a pretrained model, or None where there are none."""
    try:
        with open(reference_path(model), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def calibrated_policy(tags: Sequence[str], reference: dict, smooth: int = 1) -> DecisionPolicy:
    """The calibrated rule from reference statistics (load_reference) of the model with these tags."""
    tags = tuple(tags)
    if list(reference["tags"]) != list(tags):
        raise ValueError(f"the reference statistics of {reference.get('model')!r} are for other tags")
    stats = reference["statistics"]
    if min(stats["window_std"] + stats["track_std"]) <= 0:
        raise ValueError(f"the reference statistics of {reference.get('model')!r} have a tag with no spread")
    z = np.asarray(stats["window_mean"]) + WINDOW_Z * np.asarray(stats["window_std"])
    return DecisionPolicy(tags=tags, thresholds=1 / (1 + np.exp(-z)), rule=CALIBRATED, smooth=smooth,
                          moods=tuple(t for t in tags if is_mood(t)), track_mean=stats["track_mean"],
                          track_std=stats["track_std"], min_track_tags=MIN_TRACK_TAGS,
                          max_track_tags=MAX_TRACK_TAGS, max_moods=MAX_MOODS,
                          origin=f"calibrated on {reference['description']}")


def evidence_thresholds(base_rate, window_mean, window_std, ratio: float,
                        window_z: float = WINDOW_Z) -> np.ndarray:
    """Per tag, the lowest score that is both real evidence (odds >= ratio x the base odds) and
    distinctive (log-odds >= window_z reference deviations above the reference windows' mean)."""
    real = logit(base_rate) + math.log(ratio)
    distinct = np.asarray(window_mean, np.float64) + window_z * np.asarray(window_std, np.float64)
    return 1 / (1 + np.exp(-np.maximum(real, distinct)))


def evidence_policy(tags: Sequence[str], reference: dict, smooth: int = 1, levels: EvidenceLevels | None = None,
                    window_z: float = WINDOW_Z, **overrides) -> DecisionPolicy:
    """The evidence rule (the module docstring) from reference statistics (load_reference) with base
    rates, of the model with these tags, at the model's levels (EVIDENCE_LEVELS; `overrides`:
    EvidenceLevels fields)."""
    tags = tuple(tags)
    if list(reference["tags"]) != list(tags):
        raise ValueError(f"the reference statistics of {reference.get('model')!r} are for other tags")
    stats = reference["statistics"]
    if "base_rate" not in stats:
        raise ValueError(f"the reference statistics of {reference.get('model')!r} have no base rates "
                         "(made by an earlier scripts/real_music_report.py calibrate)")
    if min(stats["window_std"]) <= 0 or not 0 < min(stats["base_rate"]) <= max(stats["base_rate"]) < 1:
        raise ValueError(f"the reference statistics of {reference.get('model')!r} have a tag with no spread "
                         "or a base rate outside (0, 1)")
    levels = dataclasses.replace(levels or EVIDENCE_LEVELS.get(reference.get("model"), DEFAULT_EVIDENCE_LEVELS),
                                 **overrides)
    # The floor guards style, era and voice tags, whose base rates a reference without that kind of
    # music underestimates; moods are measured across the reference's whole emotional range.
    floor = np.array([levels.min_mood_base_rate if is_mood(t) else levels.min_base_rate for t in tags])
    base_rate = np.maximum(np.asarray(stats["base_rate"], np.float64), floor)
    thresholds = evidence_thresholds(base_rate, stats["window_mean"], stats["window_std"], levels.ratio, window_z)
    return DecisionPolicy(tags=tags, thresholds=thresholds, rule=EVIDENCE, smooth=smooth,
                          moods=tuple(t for t in tags if is_mood(t)), track_share=levels.track_share,
                          mood_share=levels.mood_share, base_rate=base_rate, evidence_ratio=levels.ratio,
                          max_track_tags=MAX_TRACK_TAGS, max_moods=MAX_MOODS,
                          origin=f"evidence over base rates from {reference['description']}")
