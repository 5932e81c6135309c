"""Tempo (BPM) of a tagged file, per window and for the track, with librosa's tempo estimation.

From the file's mel frames (the model's own, already computed while tagging): the onset strength
envelope (librosa.onset.onset_strength of the frames in dB, block by block: bounded memory), and
librosa's tempo estimate (librosa.feature.tempo, the estimate librosa.beat.beat_track starts
from: the autocorrelation tempogram of 8 s of onsets, weighted by a log-normal prior around 120
BPM). A window's tempo is the estimate from the 8 s of onsets around its centre; the track's
from the mean of those windows' tempograms (librosa's `aggregate`, taken at the windows rather
than at every frame: 200x less work, the same answer on steady music).

The track's tempo is *stable* (and only then written into the file's BPM tag by --write_tags)
when at least STABLE_SHARE of the windows that have onsets agree with it within
STABLE_TOLERANCE: music without a steady beat (ambient, rubato, tempo changes) gets a tempo in
the outputs, marked unstable, but none in the file, where players would take it as the track's.
A window without onsets (silence, drones) has no tempo (NaN).
"""
from __future__ import annotations

import dataclasses

import numpy as np

STABLE_TOLERANCE = 0.04    # a window's tempo within 4 % of the track's agrees with it
STABLE_SHARE = 0.75        # of the windows with onsets
MIN_ONSET = 1e-3           # a window whose mean onset strength is below this has no tempo
AC_SECONDS = 8.0           # librosa.feature.tempo's default autocorrelation span
ENVELOPE_BLOCK = 8192      # frames of onset envelope computed at once


@dataclasses.dataclass(frozen=True)
class Tempo:
    """bpm: the track's tempo (NaN if none); windows [W]: each window's (NaN where no onsets);
    agreement: the share of windows with onsets that agree with the track's tempo."""
    bpm: float
    windows: np.ndarray
    agreement: float

    @property
    def stable(self) -> bool:
        return bool(np.isfinite(self.bpm) and self.agreement >= STABLE_SHARE)

    def to_dict(self) -> dict:
        return {"bpm": None if not np.isfinite(self.bpm) else round(float(self.bpm), 2),
                "stable": self.stable, "agreement": round(float(self.agreement), 3)}


def onset_envelope(read_frames, n_frames: int) -> np.ndarray:
    """librosa's onset strength [n_frames] of power mel frames, read with read_frames(first,
    count) -> [count, n_mels] a block at a time (equal to computing it over the whole file: each
    frame looks one frame back, and a block starts a few frames early)."""
    import librosa
    if n_frames < 2:
        return np.zeros(n_frames, np.float32)
    margin, parts = 4, []
    for first in range(0, n_frames, ENVELOPE_BLOCK):
        begin, count = max(0, first - margin), min(ENVELOPE_BLOCK, n_frames - first)
        frames = read_frames(begin, first - begin + count)
        envelope = librosa.onset.onset_strength(S=librosa.power_to_db(np.asarray(frames, np.float32).T, ref=1.0,
                                                                      top_db=None))
        parts.append(envelope[first - begin:first - begin + count])
    return np.concatenate(parts).astype(np.float32)


def estimate(read_frames, n_frames: int, sample_rate: int, hop_length: int, window_starts: np.ndarray,
             window_frames: int) -> Tempo:
    """The tempo of a file from its mel frames (see the module docstring; read_frames as for
    onset_envelope), with the windows given by their first frames."""
    import librosa
    envelope = onset_envelope(read_frames, n_frames)
    starts = np.asarray(window_starts, int)
    windows = np.full(len(starts), np.nan, np.float32)
    span = int(round(AC_SECONDS * sample_rate / hop_length))
    centres = np.minimum(starts + window_frames // 2, max(n_frames - 1, 0))
    padded = np.pad(envelope, (span // 2, span - span // 2))
    has_onsets = np.array([envelope[s:s + window_frames].mean() > MIN_ONSET if n_frames else False for s in starts])
    if not has_onsets.any():
        return Tempo(float("nan"), windows, 0.0)
    segments = np.stack([padded[c:c + span] for c in centres[has_onsets]])      # [W', span]
    tempograms = librosa.feature.tempogram(onset_envelope=segments, sr=sample_rate, hop_length=hop_length,
                                           win_length=span, center=False)[..., :1]  # [W', span, 1]
    local = librosa.feature.tempo(tg=tempograms, sr=sample_rate, hop_length=hop_length, aggregate=None)
    windows[has_onsets] = np.asarray(local).reshape(-1)
    bpm = float(np.asarray(librosa.feature.tempo(tg=tempograms.mean(axis=0), sr=sample_rate, hop_length=hop_length,
                                                 aggregate=None)).reshape(-1)[0])
    agreement = float(np.mean(np.abs(windows[has_onsets] / bpm - 1) <= STABLE_TOLERANCE)) if bpm > 0 else 0.0
    return Tempo(bpm if bpm > 0 else float("nan"), windows, agreement)
