"""What a tagged output folder's database holds, read as the tests need it."""
from __future__ import annotations

import os

from jaxtag.library.arrays import read_arrays
from jaxtag.library.state import LibraryState


def records(out) -> dict:
    """{name: record} of every file the library knows (jaxtag.library.state.LibraryState.records)."""
    state = LibraryState.existing(os.fspath(out))
    if state is None:
        return {}
    with state:
        return state.records()


def record(out, name: str) -> dict | None:
    return records(out).get(name)


def decided_count(out) -> int:
    """Files done: those whose decisions are recorded (after all their outputs)."""
    return sum(1 for r in records(out).values() if "settings" in r)


def analyses(out) -> list:
    state = LibraryState.existing(os.fspath(out))
    if state is None:
        return []
    with state:
        return state.analyses_all()


def stored(out, name: str, model: str | None = None) -> dict | None:
    """The stored arrays of a file's audio by `model` (default: the model its decisions are of)."""
    r = record(out, name)
    if r is None:
        return None
    with LibraryState(os.fspath(out)) as state:
        analysis = state.analysis(r["source"]["content"], model or r["settings"]["model"])
    return None if analysis is None else read_arrays(os.fspath(out), analysis.arrays)
