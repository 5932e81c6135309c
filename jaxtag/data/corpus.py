"""Find the tracks of a CAL500exp-layout directory and split them (paper 2 and 3.4).

Layout (see README):  <root>/<audio_dir>/<track>.mp3  and  <root>/SegLabelHard[/SegLabelHard]/<track>.csv
Track names contain dots, commas, parentheses and dashes; they are never parsed.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np
from absl import logging

from jaxtag.data import labels
from jaxtag.data.audio import AUDIO_EXTENSIONS
from jaxtag.data.tags import CAL500EXP_TAGS
from jaxtag.errors import DataError

LABEL_SET_DIRS = {"hard": "SegLabelHard", "soft": "SegLabelSoft"}
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Track:
    name: str
    audio_path: str
    label_path: str


def label_folder(root: str, label_set: str, label_dir: str = "") -> str:
    """The folder holding the CSVs: label_dir if given, else SegLabelX/SegLabelX or SegLabelX."""
    if label_dir:
        path = label_dir if os.path.isabs(label_dir) else os.path.join(root, label_dir)
        if not os.path.isdir(path):
            raise DataError(path, "label folder not found")
        return path
    if label_set not in LABEL_SET_DIRS:
        raise DataError(root, f"label_set must be one of {sorted(LABEL_SET_DIRS)}, got {label_set!r}")
    name = LABEL_SET_DIRS[label_set]
    for candidate in (os.path.join(root, name, name), os.path.join(root, name)):
        if os.path.isdir(candidate):
            return candidate
    raise DataError(root, f"no {name}/ folder with the {label_set} label CSVs")


def _files_by_stem(folder: str, extensions: Sequence[str]) -> dict[str, str]:
    found = {}
    for entry in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(entry)
        if ext.lower() in extensions and os.path.isfile(os.path.join(folder, entry)):
            found.setdefault(stem, os.path.join(folder, entry))
    return found


def find_tracks(root: str, audio_dir: str = "CAL500_32kps", label_set: str = "hard",
                label_dir: str = "", skip_missing: bool = False) -> list[Track]:
    """Pair each label CSV with its audio file. Tracks missing either are reported by name and are
    an error unless skip_missing (then they are skipped, with a warning)."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(root, "data root does not exist (set --config.data.root to a CAL500exp directory)")
    audio_folder = os.path.join(root, audio_dir)
    if not os.path.isdir(audio_folder):
        raise DataError(audio_folder, "audio folder not found (set --config.data.audio_dir)")
    labels = _files_by_stem(label_folder(root, label_set, label_dir), (".csv",))
    audio = _files_by_stem(audio_folder, AUDIO_EXTENSIONS)
    no_audio = sorted(set(labels) - set(audio))
    no_labels = sorted(set(audio) - set(labels))
    problems = []
    if no_audio:
        problems.append(f"{len(no_audio)} track(s) have a label CSV but no audio: {_some(no_audio)}")
    if no_labels:
        problems.append(f"{len(no_labels)} track(s) have audio but no label CSV: {_some(no_labels)}")
    if problems and not skip_missing:
        raise DataError(root, "; ".join(problems) + " (set --config.data.skip_bad_tracks=True to skip them)")
    for p in problems:
        logging.warning("Skipping: %s", p)
    tracks = [Track(n, audio[n], labels[n]) for n in sorted(set(labels) & set(audio))]
    if not tracks:
        raise DataError(root, "no track has both an audio file and a label CSV")
    return tracks


def vocabulary(label_paths: Sequence[str], skip_bad: bool = False) -> tuple[str, ...]:
    """The tag columns of a corpus's label CSVs (their common header, in the first file's order):
    CAL500exp's 67, or a user's own vocabulary. Every file must have the same tag columns: one
    that differs is an error naming it and the difference; with skip_bad, the most common header
    wins and the files that differ (or cannot be read) are left to be skipped as bad tracks."""
    headers: dict[frozenset, tuple[tuple[str, ...], list[str]]] = {}
    for path in label_paths:
        try:
            columns = tuple(labels.read_tag_columns(path))
        except DataError:
            if skip_bad:
                continue
            raise
        headers.setdefault(frozenset(columns), (columns, []))[1].append(path)
        if len(headers) > 1 and not skip_bad:
            (first, (mine, [first_path, *_])), (_, (theirs, _)) = list(headers.items())[:2]
            missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
            raise DataError(path, f"its tag columns differ from {first_path}'s (every label file needs the same "
                                  f"header): missing {missing}, extra {extra}")
    if not headers:  # no label file at all: find_tracks says so, naming the corpus
        if label_paths:
            raise DataError(os.path.dirname(label_paths[0]), "no label CSV has a readable header")
        return CAL500EXP_TAGS
    return max(headers.values(), key=lambda entry: len(entry[1]))[0]


def corpus_vocabulary(root: str, label_set: str = "hard", label_dir: str = "", skip_bad: bool = False
                      ) -> tuple[str, ...]:
    """vocabulary() of every label CSV of a CAL500exp-layout directory."""
    folder = label_folder(os.path.abspath(os.path.expanduser(root)), label_set, label_dir)
    return vocabulary(list(_files_by_stem(folder, (".csv",)).values()), skip_bad)


def _some(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def make_split(names: Sequence[str], seed: int,
               fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, list[str]]:
    """Seeded random train/validation/test split of track names (paper 3.4: 400/50/50 of 500).

    Validation and test get round(fraction * n) tracks, at least one each; train gets the rest.
    The result depends only on the set of names and the seed, not on their order.
    """
    names = sorted(set(names))
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    n = len(names)
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    if n - n_val - n_test < 1:
        raise ValueError(f"{n} track(s) are too few for a train/validation/test split (need 3)")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [names[i] for i in order]
    return {"train": sorted(shuffled[n_val + n_test:]),
            "validation": sorted(shuffled[:n_val]),
            "test": sorted(shuffled[n_val:n_val + n_test])}
