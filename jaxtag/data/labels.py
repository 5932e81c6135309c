"""Segment labels -> frame labels (paper 3.2) -> long-term window labels (paper 3.3).

One windowing function, `window_starts`, serves the training data and the tagger, so a taggram's
times line up with the windows a model was trained on.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
from typing import Sequence

import numpy as np

from jaxtag.errors import DataError
from jaxtag.data.tags import CAL500EXP_TAGS

TIME_COLUMNS = ("Start_Time", "End_Time")
UNANNOTATED_MODES = ("ignore", "negative")


@dataclasses.dataclass(frozen=True)
class Segments:
    """A track's annotated segments, sorted by start time. labels: [n_segments, n_tags] in [0, 1]."""
    start: np.ndarray
    end: np.ndarray
    labels: np.ndarray
    tags: tuple[str, ...]


def _csv_rows(path: str) -> list[list[str]]:
    """The non-empty rows of a UTF-8 CSV (a BOM and Windows line endings accepted)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(path, f"cannot read label file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(path, "label file is not UTF-8 text") from None
    rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(path, "label file is empty (no header)")
    return rows


def _tag_columns(path: str, header_row: list[str]) -> list[str]:
    header = [c.strip() for c in header_row]
    if tuple(header[:2]) != TIME_COLUMNS:
        raise DataError(path, f"header must start with Start_Time,End_Time; found {header[:2]}")
    columns = header[2:]
    if len(set(columns)) != len(columns):
        raise DataError(path, "duplicate tag columns")
    if not columns or not all(columns):
        raise DataError(path, "the header names no tag columns (or an empty one)")
    return columns


def read_tag_columns(path: str | os.PathLike) -> list[str]:
    """The tag columns of a segment CSV's header, in the file's order."""
    path = os.fspath(path)
    return _tag_columns(path, _csv_rows(path)[0])


def read_segments(path: str | os.PathLike, tags: Sequence[str],
                  columns: Sequence[str] | None = CAL500EXP_TAGS) -> Segments:
    """Read a segment CSV in the CAL500exp layout and keep the columns of `tags`.

    The header is Start_Time, End_Time and the tag columns, which must be exactly `columns` (any
    order): CAL500exp's 67 by default, or a corpus's own vocabulary (corpus.vocabulary); with
    columns=None (e.g. jaxtag.tag's own CSVs), any columns that include `tags`. Rows are sorted by
    Start_Time (the release is not in time order). A UTF-8 BOM and Windows line endings are
    accepted. Anything else malformed raises DataError naming the file and row.
    """
    path = os.fspath(path)
    rows = _csv_rows(path)
    header = [c.strip() for c in rows[0]]
    columns_found = _tag_columns(path, rows[0])
    unknown = [] if columns is None else sorted(set(columns_found) - set(columns))
    missing = [t for t in (tags if columns is None else columns) if t not in columns_found]
    if unknown:
        raise DataError(path, f"unknown tag column(s) {unknown}")
    if missing:
        raise DataError(path, f"missing tag column(s) {missing}")
    columns = columns_found
    if len(rows) < 2:
        raise DataError(path, "label file has a header but no segments")

    values = np.empty((len(rows) - 1, len(header)), dtype=np.float64)
    for i, row in enumerate(rows[1:]):
        line = i + 2
        if len(row) != len(header):
            raise DataError(path, f"line {line} has {len(row)} fields, the header has {len(header)}")
        try:
            values[i] = [float(c) for c in row]
        except ValueError:
            bad = next(c for c in row if not _is_float(c))
            raise DataError(path, f"line {line}: non-numeric value {bad!r}") from None
        if not np.all(np.isfinite(values[i])):
            raise DataError(path, f"line {line}: non-finite value")
    start, end = values[:, 0], values[:, 1]
    for i in range(len(start)):
        if start[i] < 0 or end[i] < 0:
            raise DataError(path, f"line {i + 2}: negative time")
        if end[i] <= start[i]:
            raise DataError(path, f"line {i + 2}: End_Time {end[i]} is not after Start_Time {start[i]}")
    tag_values = values[:, 2:]
    if np.any((tag_values < 0) | (tag_values > 1)):
        raise DataError(path, "tag values must lie in [0, 1]")
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    overlap = np.nonzero(start[1:] < end[:-1])[0]
    if overlap.size:
        k = overlap[0]
        raise DataError(path, f"segments overlap: [{start[k]}, {end[k]}) and [{start[k + 1]}, {end[k + 1]})")
    index = [columns.index(t) for t in tags]
    return Segments(start=start, end=end, labels=tag_values[order][:, index].astype(np.float32),
                    tags=tuple(tags))


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def frame_labels(segments: Segments, n_frames: int, seconds_per_frame: float,
                 unannotated: str = "ignore") -> tuple[np.ndarray, np.ndarray]:
    """Labels per frame: frame t (centred at t * seconds_per_frame) takes the labels of the
    segment whose [Start_Time, End_Time) contains its centre.

    Returns labels [n_frames, n_tags] float32 and annotated [n_frames] bool. Frames in no segment
    are all-0; they are unannotated under "ignore" and annotated (as negatives) under "negative".
    """
    if unannotated not in UNANNOTATED_MODES:
        raise ValueError(f"unannotated must be one of {UNANNOTATED_MODES}, got {unannotated!r}")
    times = np.arange(n_frames, dtype=np.float64) * seconds_per_frame
    labels = np.zeros((n_frames, segments.labels.shape[1]), np.float32)
    annotated = np.zeros(n_frames, bool)
    for start, end, lab in zip(segments.start, segments.end, segments.labels):
        inside = (times >= start) & (times < end)
        labels[inside] = lab
        annotated |= inside
    if unannotated == "negative":
        annotated[:] = True
    return labels, annotated


def window_starts(n_frames: int, window: int, hop: int) -> np.ndarray:
    """First frame of each long-term window of a track of `n_frames` frames.

    Windows start every `hop` frames. If the last regular window stops short of the end, one more
    window is aligned to the track's end, so every frame is covered (the tagger needs that; it
    overlaps its neighbour by more than usual). A track shorter than one window gets one window
    at 0, and its frames are padded (see `pad_frames`).
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window ({window}) and hop ({hop}) must be positive")
    if n_frames <= window:
        return np.zeros(1, np.int32)
    starts = list(range(0, n_frames - window + 1, hop))
    if starts[-1] + window < n_frames:
        starts.append(n_frames - window)
    return np.asarray(starts, np.int32)


def cut_windows(frames: np.ndarray, starts, window: int) -> np.ndarray:
    """The windows [W, window, ...] of frames [n_frames, ...] starting at `starts` (padded with
    silence where the frames are shorter than one window)."""
    frames = pad_frames(frames, window)
    return frames[np.asarray(starts)[:, None] + np.arange(window)[None, :]]


def pad_frames(frames: np.ndarray, window: int) -> np.ndarray:
    """Zero-pad [n_frames, ...] at the end to at least `window` frames (silence in a power mel)."""
    missing = window - frames.shape[0]
    if missing <= 0:
        return frames
    return np.concatenate([frames, np.zeros((missing,) + frames.shape[1:], frames.dtype)])


def window_labels(labels: np.ndarray, annotated: np.ndarray, starts: np.ndarray,
                  window: int) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate frame labels into window labels (paper 3.3).

    A window's label is 1 where the mean of its annotated frames' labels is > 0.5. A window is
    masked (mask False) when fewer than half of its `window` frames are annotated; frames past the
    track's end count as unannotated. Returns labels [n_windows, n_tags] float32, mask [n_windows].
    """
    n = labels.shape[0]
    weights = annotated.astype(np.float64)
    # Cumulative sums give every window's sums in O(n) instead of O(n * window).
    csum_lab = np.concatenate([np.zeros((1, labels.shape[1])),
                               np.cumsum(labels * weights[:, None], axis=0)])
    csum_ann = np.concatenate([[0.0], np.cumsum(weights)])
    stop = np.minimum(starts + window, n)
    count = csum_ann[stop] - csum_ann[starts]
    total = csum_lab[stop] - csum_lab[starts]
    mean = total / np.maximum(count, 1.0)[:, None]
    mask = count * 2 >= window
    out = ((mean > 0.5) & (count[:, None] > 0)).astype(np.float32)
    return out, mask
