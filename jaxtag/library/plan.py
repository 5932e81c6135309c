"""What each file of a run needs, from the library's database and cheap checks only (nothing is
decoded here): done, derived again from its stored analysis (no model), recognised as audio the
library knows under another path (moved, renamed or copied: a decoding worker checks its content
fingerprint first), assembled from its networks' stored analyses, or run through the model.
"""
from __future__ import annotations

import dataclasses
import os

from jaxtag.library import state as state_lib, summary
from jaxtag.library.arrays import untouched
from jaxtag.tagging.outputs import FORMATS, format_files, output_names

RECORD_VERSION = 2
MODEL, DERIVE, DONE = "model", "derive", "done"
PLAN_MESSAGE_FROM = 1000  # files


@dataclasses.dataclass
class LibraryOptions:
    output_dir: str
    formats: tuple = FORMATS
    workers: int = 0             # decoding processes; 0: one per CPU this process may use
    force: bool = False          # redo files whose outputs exist
    embeddings: bool = False     # NAME.embeddings.npz: the penultimate layer per window
    write_tags: bool = False     # the track's tags into the file's own metadata
    dry_run: bool = False        # with write_tags: only say what would be written
    top_n: int = 3               # top tags printed per file
    embed_audio: bool = False    # the audio in each track page (for a single file to share), else linked
    roots: tuple = ()            # the directories given: outputs mirror the folders below them
    wait_for_lock: float = 0.0   # seconds to wait for another run into the same output folder
    # The tagger's precision was auto's choice from the library's record (precision.Choice):
    # the run does not start if, by the time it holds the lock, another run recorded another one.
    follows_record: bool = False


def settings_of(tagger) -> dict:
    """What makes two runs' outputs of the same file the same: the model (its weights), the
    decision policy and the section settings (the model alone makes the stored scores and
    embeddings)."""
    return {"version": RECORD_VERSION, "model": tagger.fingerprint, "policy": tagger.policy.key(),
            "sections": tagger.sectioning.key()}


def wanted_outputs(name: str, options: LibraryOptions) -> list[str]:
    """The output files (base names) a file gets with these options."""
    return [f"{name}{suffix}" for fmt in options.formats for suffix in format_files(fmt)] + \
        ([f"{name}.embeddings.npz"] if options.embeddings else [])


def usable(output_dir: str, analysis: state_lib.Analysis | None) -> bool:
    """Whether an analysis's arrays are there, whole (their size as written: a truncated copy
    is seen without reading it)."""
    if analysis is None:
        return False
    try:
        return os.path.getsize(os.path.join(output_dir, analysis.arrays)) == analysis.bytes
    except OSError:
        return False


def plan_file(path: str, name: str, options: LibraryOptions, settings: dict, record: dict | None,
              analyses: dict) -> tuple[str, str | None]:
    """What a file known at this path needs: (DONE, None) (its decisions are of this model,
    policy and audio, with every output wanted now), (DERIVE, None) (this model's analysis of its
    audio is stored: the outputs are derived again), (MODEL, None); or (DONE or DERIVE, content
    fingerprint) where only the file's size or mtime changed: a decoding worker then checks whether
    its audio is still that (retagged, touched). analyses: this model's analyses by content
    (state.analyses_by_content)."""
    try:
        if options.force or record is None:
            return MODEL, None
        source = record["source"]
        analysis = analyses.get(source["content"])
        if not usable(options.output_dir, analysis):
            return MODEL, None
        content = None if untouched(path, source) else source["content"]
        if record.get("settings") == settings:
            wanted = wanted_outputs(name, options)
            if set(wanted) <= set(record["outputs"]) and all(
                    os.path.exists(os.path.join(options.output_dir, f)) for f in wanted):
                return DONE, content
        return DERIVE, content
    except (OSError, KeyError, TypeError):  # gone, unreadable
        return MODEL, None


@dataclasses.dataclass
class LibraryPlan:
    """What each file of a run needs (plan_file), before anything is decoded."""
    names: dict      # path -> its output name
    settings: dict   # this run's (settings_of)
    done: dict       # path -> its library row: nothing to do
    derive: list     # paths whose outputs are derived again from their stored analysis
    todo: list       # paths for the decoding workers, in order: for the model, or to check first
    check: dict      # path -> (DONE or DERIVE, content fingerprint, record): only its stamp changed
    assemble: list = dataclasses.field(default_factory=list)   # paths whose networks' analyses are all stored
    partial: dict = dataclasses.field(default_factory=dict)    # path -> the one network to run; the others' are stored
    contents: dict = dataclasses.field(default_factory=dict)   # path -> its audio's content fingerprint, where known
    moved: dict = dataclasses.field(default_factory=dict)      # new path -> the record of the same audio elsewhere
    library: list = dataclasses.field(default_factory=list)    # paths not given, derived again for one policy per view


def plan_library(tagger, files: list[str], options: LibraryOptions, log, state, reuse: bool = False) -> LibraryPlan:
    """The plan of a run over `files` (the local run's and the Beam driver's). reuse: files whose
    stored analyses include some of the tagger's networks' go to plan.assemble and plan.partial
    (reusable_parts; the local run's) instead of the model."""
    if len(files) >= PLAN_MESSAGE_FROM:  # reading the records of a big library takes a while: say so
        log.say(f"checking {len(files)} file(s) against the library's database in {options.output_dir}")
    found = state.records()
    known_names = {r["source"]["path"]: name for name, r in found.items()}
    plan = LibraryPlan(output_names(files, options.roots, known_names), settings_of(tagger), {}, [], [], {})
    analyses = state.analyses_by_content(plan.settings["model"])
    given, kept, movers = set(), None, {}
    for path in files:
        source = os.path.abspath(path)
        given.add(source)
        record = found.get(plan.names[path])
        if record is not None and record["source"]["path"] != source:
            record = None
        what, content = plan_file(path, plan.names[path], options, plan.settings, record, analyses)
        if what == MODEL and record is not None and not options.force and \
                (record.get("settings") or {}).get("model") == plan.settings["model"]:
            log.warn(path, "its stored analysis is missing or damaged: analysing it again")
        if record is not None and what != MODEL:
            plan.contents[path] = record["source"]["content"]
        if content is not None:  # only its stamp changed: a worker checks its audio (then)
            plan.check[path] = (what, content, record)
            plan.todo.append(path)
        elif what == DONE:
            plan.done[path] = summary.row_from_json(record["summary"])
        elif what == DERIVE:
            plan.derive.append(path)
        elif record is None and not options.force and (elsewhere := _same_stamp_elsewhere(path, state, analyses,
                                                                                         options.output_dir)):
            # A file new at this path with the size and mtime of audio the library knows: moved,
            # renamed or copied (mv, beet move and cp -p keep them); a worker checks its content.
            plan.check[path] = (DERIVE, elsewhere["source"]["content"], elsewhere)
            if not os.path.exists(elsewhere["source"]["path"]):
                movers.setdefault(elsewhere["source"]["path"], []).append(path)
            plan.todo.append(path)
        elif reuse and record is None and not options.force and \
                (kept := _kept_audio(state, plan.settings, options.output_dir) if kept is None else kept):
            # New here, while the library keeps analyses of audio no file holds now (moved away and
            # back, restored): a worker checks whether this is one of them (then no model).
            plan.check[path] = (DERIVE, kept, None)
            plan.todo.append(path)
        elif reuse and (missing := reusable_parts(tagger, path, options, record, state)) is not None:
            plan.contents[path] = record["source"]["content"]
            if missing:
                plan.partial[path] = missing[0]
            else:
                plan.assemble.append(path)
        else:
            plan.todo.append(path)
    # A file gone from its path and found at several new ones was moved to one (the one keeping its
    # name, else the first) and copied to the others.
    for old, paths in movers.items():
        mover = next((p for p in paths if os.path.basename(p) == os.path.basename(old)), paths[0])
        plan.moved[mover] = plan.check[mover][2]
    # One policy per view: the library's other files of this model, decided with other settings,
    # are derived again (no model) so the summary, pages and playlists agree.
    for name, record in found.items():
        path = record["source"]["path"]
        if path in given or record.get("settings") in (None, plan.settings) or \
                record["settings"].get("model") != plan.settings["model"] or options.force:
            continue
        if usable(options.output_dir, analyses.get(record["source"]["content"])) \
                and os.path.exists(path):
            plan.names[path] = name
            plan.contents[path] = record["source"]["content"]
            plan.library.append(path)
    plan.derive.extend(plan.library)
    return plan


def _kept_audio(state, settings: dict, output_dir: str) -> frozenset:
    """The content fingerprints of the audio no file of the library holds now whose analysis by
    this model is kept, whole (until `python -m jaxtag.library OUT --clean`)."""
    return frozenset(a.content for a in state.orphan_analyses()
                     if a.model == settings["model"] and usable(output_dir, a))


def _same_stamp_elsewhere(path: str, state, analyses: dict, output_dir: str) -> dict | None:
    """A record of another path with this file's size and mtime, whose audio this model's stored
    analysis covers (`analyses`: this model's, by content; the one whose path is gone first: a move
    rather than a copy)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    candidates = [r for r in state.files_with_stamp(st.st_size, st.st_mtime_ns)
                  if r["source"]["path"] != os.path.abspath(path)
                  and usable(output_dir, analyses.get(r["source"]["content"]))]
    candidates.sort(key=lambda r: os.path.exists(r["source"]["path"]))
    return candidates[0] if candidates else None


def reusable_parts(tagger, path: str, options: LibraryOptions, record: dict | None, state) -> list[str] | None:
    """For a file the tagger's model must run on: the fingerprints of its networks whose analyses
    of this audio are not stored, where the others' are ([]: all there); None where none of them
    are, or more than one is missing (the model runs whole then), or the file may have changed (its
    size or mtime differ from its record's)."""
    if options.force or record is None:
        return None
    try:
        if not untouched(path, record["source"]):
            return None
    except (OSError, KeyError, TypeError):
        return None
    have = set()
    for analysis in state.analyses_of(record["source"]["content"]):
        if usable(options.output_dir, analysis):
            have |= {analysis.model, *analysis.networks}
    needed = tagger.part_fingerprints
    missing = [fp for fp in needed if fp not in have]
    return missing if len(missing) < len(needed) and len(missing) <= 1 else None
