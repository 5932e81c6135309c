"""What a Beam run's workers wrote, for its driver (jaxtag.library.beam): only the driver writes the
library's database. A worker publishes, per file, its stored arrays (when new), its outputs and,
last, one small JSON entry in OUT/.jaxtag/journal/: the file's decisions as the database records
them (write.file_decisions) and its new analysis. The driver records the entries (the analysis and
the file first, the decisions last, as the local run does) once the pipeline is done, and at the
start of every run, local or on Beam, those a run killed part way left: its finished files are not
redone. An entry is removed once recorded.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

from jaxtag.files import TMP_MARK
from jaxtag.library.state import STATE_DIR, Analysis
from jaxtag.library.write import file_decisions, record_analysis

JOURNAL = os.path.join(STATE_DIR, "journal")


def entry_file(name: str) -> str:
    """A file's entry, relative to OUT (by its output name, which may hold any character)."""
    return os.path.join(JOURNAL, hashlib.sha1(os.fsencode(name)).hexdigest() + ".json")


def journal_entry(options, name: str, path: str, source: dict, settings: dict, row: dict,
                  analysis: Analysis | None, worker: str) -> dict:
    """A file's entry (see the module docstring): `path` as the run was given it; `analysis` None
    where its outputs were derived from a stored one; `worker` the process that wrote it."""
    return {"path": path, "worker": worker, "decisions": file_decisions(options, name, path, source, settings, row),
            "analysis": None if analysis is None else dataclasses.asdict(analysis)}


def import_journal(state, output_dir: str) -> list[dict]:
    """Record every entry in the library's database and remove it (see the module docstring);
    returns them. One that cannot be read is passed over (its file has no decisions: it is redone)."""
    folder = os.path.join(output_dir, JOURNAL)
    if not os.path.isdir(folder):
        return []
    entries = []
    for name in sorted(os.listdir(folder)):
        if TMP_MARK in name or not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                entry = json.load(f)
            decisions = entry["decisions"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if entry.get("analysis"):
            analysis = Analysis(**dict(entry["analysis"], networks=tuple(entry["analysis"]["networks"])))
            record_analysis(state, analysis, decisions["name"], decisions["source"], decisions["root"])
        state.put_decision(**decisions)
        entries.append(entry)
    shutil.rmtree(folder, ignore_errors=True)
    return entries
