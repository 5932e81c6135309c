"""Tagging a library or an archive on Apache Beam:
`python -m jaxtag.tag DIR_OR_LIST --output_dir=OUT --beam_pipeline_options="runner=...,..."`.

The same job as jaxtag.library.run, on Beam's workers instead of one machine's processes, ending
in the same state: the same rows in the library's database, the same files in OUT.

1. The driver takes the output folder (one run at a time), opens the library's database (it alone
   writes it: the workers never open it), records what a run killed part way left (below), lists
   the files (a directory, or a text file of paths: an archive), names their outputs and plans each
   exactly as the local run does (DONE, DERIVE or MODEL, with a content check for files whose size
   or mtime changed, and files moved or renamed recognised by their stamp). It forgets the
   decisions of the files whose outputs are redone, and gives the workers, with each file to
   derive or check, its content fingerprint and its stored analysis's arrays (their file in OUT,
   looked up in the database).
2. `DecodeFile` (a DoFn, on the workers) checks or decodes a file into mel frames, finds its tempo
   and emits its windows, keyed by (file, window), and its facts (length, envelope, stamp).
3. `RunInference` with `WindowFeatures` (a jaxtag ModelHandler: the model is built in
   `load_model` from a pretrained name or a run's checkpoint, so nothing heavy is pickled; one
   model per worker process) encodes windows of many files together, in batches of the model's
   chunk size.
4. The windows' features are grouped back by file with its facts; `WriteFile` runs the
   across-window stage, decided by the driver's DecisionPolicy itself (sent with the DoFn), and
   writes the file's stored arrays (addressed by content), its outputs and, last, its journal
   entry (jaxtag.library.journal: its decisions as the database records them, and its new
   analysis), each staged locally and published through Beam's FileSystems (a temporary name,
   then a rename), so the workers can write to a bucket mounted on the driver. Files planned
   DERIVE (or found unchanged by their check) are written the same way from their stored arrays,
   read through FileSystems.
5. The workers report failures and files found unchanged through one plain ParDo writing a
   JSON-lines file per bundle in the run's folder. The driver lists the failures in
   OUT/.jaxtag/failed/RUN.jsonl (the dead-letter output; the others go on), brings the stamps of
   the unchanged files up to date, records the journal's entries in the database (analysis and
   file first, decisions last, by the local run's functions) and removes them, follows the moves,
   then ends as the local run does (jaxtag.library.run.finish_run): files gone pruned, and
   library.csv, library.json, index.html and the similarity index written from the database.

A run killed part way leaves the entries of the files it finished: the next run, local or on
Beam, records them first and so skips those files. Scores equal the local run's (the same windows
through the same network); tested with the DirectRunner in multi-processing mode
(tests/test_beam.py) and on a Dask cluster (runner=dask, tests/test_dask.py).
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
import uuid

import numpy as np

from jaxtag.beam import failures_named, require_beam
from jaxtag.data import labels as labels_lib
from jaxtag.errors import problem_of
from jaxtag.files import TMP_MARK, left_by_dead_process
from jaxtag.library import summary
from jaxtag.library.arrays import read_arrays
from jaxtag.library.journal import JOURNAL, entry_file, import_journal, journal_entry
from jaxtag.library.log import Log
from jaxtag.library.plan import DERIVE, LibraryOptions, LibraryPlan, plan_library
from jaxtag.library.run import (LibraryResult, finish_run, follow_move, forget_unreadable, remove_leftovers,
                                run_library)
from jaxtag.library.state import ANALYSES, STATE_DIR
from jaxtag.library.write import UnreadableAnalysis, arrays_taggram, kept_parts, write_file
from jaxtag.tagging import decoding, tempo as tempo_lib

FAILED = os.path.join(STATE_DIR, "failed")
_TAGGERS: dict[str, object] = {}   # one model per worker process, whichever stage asks first


def tagger_of(spec: dict, policy=None):
    """The Tagger a spec names (Tagger.spec), built once per process; with `policy` (the driver's
    DecisionPolicy itself, sent to the workers), a copy deciding by it (the same model)."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _TAGGERS:
        from jaxtag.tagging.tagger import Tagger
        _TAGGERS[key] = Tagger.of_spec(spec)
    tagger = _TAGGERS[key]
    if policy is None or policy.key() == tagger.policy.key():
        return tagger
    # (Policies compare by identity: one sent to a worker is a copy, so they are told apart by key.)
    decided = f"{key}|{policy.key()}"
    if decided not in _TAGGERS:
        _TAGGERS[decided] = copy.copy(tagger)
        _TAGGERS[decided].policy = policy
    return _TAGGERS[decided]


def worker_name() -> str:
    """Which worker process this is: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def list_files(inputs: list[str]) -> list[str]:
    """The audio files of the inputs: directories walked as the local run does, a text file (not
    audio) read as a list of paths, one per line (blank lines and # comments passed over)."""
    from jaxtag.data.audio import AUDIO_EXTENSIONS
    from jaxtag.tagging.outputs import find_audio
    files = []
    for item in inputs:
        if os.path.isfile(item) and os.path.splitext(item)[1].lower() not in AUDIO_EXTENSIONS:
            with open(item, encoding="utf-8", errors="surrogateescape") as f:
                files += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        else:
            files += find_audio([item])
    return list(dict.fromkeys(files))


# -- the workers' stages -----------------------------------------------------------------------------

def _decode_file_fn():
    beam = require_beam()

    class DecodeFile(beam.DoFn):
        """A file -> its windows ((name, k), window) and, on the "facts" output, (name, facts);
        "unchanged" / "derive": a file whose audio is what it was tagged from (done, or its outputs
        to derive again); "failed": _failure."""

        def __init__(self, frontend: dict):
            self.frontend = frontend

        def setup(self):
            from jaxtag.data import features
            from jaxtag.data.features import FrontendSettings
            self.settings = FrontendSettings(**self.frontend)
            self.basis = features.mel_basis(self.settings)

        def process(self, item):
            path, name, expected = item["path"], item["name"], item.get("expected")
            folder = tempfile.mkdtemp(prefix="jaxtag-beam-")
            try:
                args = (path, self.frontend, os.path.join(folder, "frames.f32"), self.basis)
                decoded = decoding.decode_file(*args) if expected is None else \
                    decoding.check_then_decode(decoding.decode_file, expected, *args)
                if isinstance(decoded, decoding.Unchanged):
                    # Only retagged, touched, copied or moved: its outputs derived again (from the
                    # stored arrays named in `item`), or its stamp brought up to date (by the driver).
                    then = "derive" if item.get("then") == DERIVE else "unchanged"
                    yield beam.pvalue.TaggedOutput(then, dict(item, stamp=decoded.stamp))
                    return
                if isinstance(decoded, decoding.DecodeFailure):
                    yield beam.pvalue.TaggedOutput("failed", _failure(path, decoded.problem))
                    return
                f = self.settings
                mel = decoding.read_frames(decoded.frames_path, f.n_mels, 0, decoded.n_frames)
                starts = labels_lib.window_starts(decoded.n_frames, f.window_frames, f.window_hop)
                found = tempo_lib.estimate(lambda a, n: mel[a:a + n], decoded.n_frames, f.sample_rate,
                                           f.hop_length, starts, f.window_frames)
                for k, window in enumerate(labels_lib.cut_windows(mel, starts, f.window_frames)):
                    yield (name, k), window
                facts = {"path": path, "duration": decoded.duration, "n_frames": decoded.n_frames,
                         "n_windows": len(starts), "envelope": decoded.envelope, "stamp": decoded.stamp,
                         "warnings": decoded.warnings, "tempo": (found.bpm, found.windows, found.agreement)}
                yield beam.pvalue.TaggedOutput("facts", (name, facts))
            except Exception as e:  # noqa: BLE001 - one file's failure must not stop the others
                yield beam.pvalue.TaggedOutput("failed", _failure(path, problem_of(e)))
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    return DecodeFile


def window_features_handler(spec: dict, batch_size: int):
    """A jaxtag ModelHandler: windows -> the model's per-window features, batches of windows of
    any files, the model loaded once per worker process."""
    require_beam()
    from apache_beam.ml.inference.base import ModelHandler, PredictionResult

    class WindowFeatures(ModelHandler):
        def __init__(self):
            super().__init__(min_batch_size=1, max_batch_size=batch_size)
            self.spec = spec

        def load_model(self):
            return tagger_of(self.spec)

        def run_inference(self, batch, model, inference_args=None):
            features = model.encode_chunk(np.stack(batch))
            return [PredictionResult(None, feature) for feature in features]

        def get_num_bytes(self, batch):
            return sum(w.nbytes for w in batch)

    return WindowFeatures()


def _write_file_fn():
    beam = require_beam()

    class WriteFile(beam.DoFn):
        """A file's windows' features and facts (or, to derive, its item: path, name, content and
        stored arrays) -> its stored arrays when new, its outputs and, last, its journal entry,
        published to OUT, decided by the driver's DecisionPolicy; emits nothing but, on "failed",
        _failure. The database is the driver's: nothing here opens it."""

        def __init__(self, spec: dict, policy, options: LibraryOptions, settings: dict, derive: bool = False):
            self.spec, self.policy, self.options, self.settings, self.derive = spec, policy, options, settings, derive

        def process(self, element):
            tagger = tagger_of(self.spec, self.policy)
            out = self.options.output_dir
            staging = tempfile.mkdtemp(prefix="jaxtag-beam-out-")
            try:
                path, name, taggram, embeddings, source, warnings, parts = \
                    (_stored if self.derive else _analysed)(tagger, out, element)
                row, analysis = write_file(self.options, name, path, taggram, embeddings, source, warnings,
                                           self.settings, new_scores=not self.derive, tagger=tagger, output_dir=staging,
                                           link_from=os.path.dirname(os.path.join(out, name)), parts=parts)
                entry = journal_entry(self.options, name, path, source, self.settings, row, analysis, worker_name())
                local = os.path.join(staging, entry_file(name))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "w", encoding="utf-8") as f:
                    json.dump(entry, f)
                publish(staging, out)
            except Exception as e:  # noqa: BLE001 - one file's failure must not stop the others
                yield beam.pvalue.TaggedOutput("failed", _failure(
                    element["path"] if self.derive else _path_of(element), problem_of(e),
                    unreadable=isinstance(e, UnreadableAnalysis)))
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    return WriteFile


def _analysed(tagger, out: str, element):
    """(path, name, taggram, embeddings, source, warnings, parts) of a file from its windows'
    features and facts (the across-window stage, as the local run's)."""
    name, grouped = element
    facts = grouped["facts"][0]
    path = facts["path"]
    features = dict(grouped["features"])
    if len(features) != facts["n_windows"]:
        raise RuntimeError(f"{len(features)} of its {facts['n_windows']} windows came back")
    parts = tagger.parts_of(np.stack([features[k] for k in range(facts["n_windows"])]))
    scores, embeddings = tagger.assemble(parts)
    from jaxtag.tagging.outputs import shown_path
    taggram = tagger.taggram(shown_path(path), facts["duration"], facts["n_frames"], scores, facts["envelope"])
    taggram = dataclasses.replace(taggram, tempo=tempo_lib.Tempo(*facts["tempo"]))
    source = {"path": os.path.abspath(path), **facts["stamp"]}
    return path, name, taggram, embeddings, source, facts["warnings"], kept_parts(tagger, parts)


def _stored(tagger, out: str, item: dict):
    """The same of a file whose outputs are derived from its stored arrays (item["arrays"], read
    through FileSystems)."""
    stored, source, taggram = arrays_taggram(tagger, out, item["arrays"], item["content"], item["path"],
                                             read=_read_arrays)
    return item["path"], item["name"], taggram, stored["embeddings"], source, stored["warnings"], None


def _failure(path: str, problem: str, unreadable: bool = False) -> dict:
    """A file that failed, as a worker reports it (unreadable: its stored analysis could not be read)."""
    return {"path": path, "problem": problem, "unreadable": unreadable}


def _path_of(element) -> str:
    name, grouped = element
    facts = grouped.get("facts") or []
    return facts[0]["path"] if facts else name


# -- OUT through Beam's FileSystems ------------------------------------------------------------------

def publish(staging: str, output_dir: str) -> None:
    """Copy a file's stored arrays, outputs and journal entry from the local staging folder to OUT
    through Beam's FileSystems (local disk, gs://, s3://, hdfs://...): each under a temporary name,
    then renamed; the arrays first, the journal entry last, so an entry is never there without
    what it names."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from jaxtag.files import temporary_name

    def order(local: str) -> int:
        relative = os.path.relpath(local, staging)
        return 0 if relative.startswith(ANALYSES + os.sep) else 2 if relative.startswith(JOURNAL + os.sep) else 1
    files = [os.path.join(root, f) for root, _, names in os.walk(staging) for f in names]
    for local in sorted(files, key=order):
        final = FileSystems.join(output_dir, *os.path.relpath(local, staging).split(os.sep))
        temporary = temporary_name(final)     # a killed worker's leftover is cleaned up by the next run
        with open(local, "rb") as src, FileSystems.create(temporary, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        FileSystems.rename([temporary], [final])


def _read_arrays(output_dir: str, arrays: str):
    """arrays.read_arrays through Beam's FileSystems (`arrays`: their file, relative to OUT)."""
    from apache_beam.io.filesystems import FileSystems
    try:
        with FileSystems.open(FileSystems.join(output_dir, *arrays.split(os.sep))) as f:
            data = f.read()
    except Exception:  # noqa: BLE001 - gone or unreadable: the caller says so
        return None
    folder = tempfile.mkdtemp(prefix="jaxtag-beam-arrays-")
    try:
        with open(os.path.join(folder, "arrays.npz"), "wb") as f:
            f.write(data)
        return read_arrays(folder, "arrays.npz")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- the driver ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class BeamResult(LibraryResult):
    """What tag_library returns, and which worker process (host:pid) wrote each file tagged or
    derived in this run."""
    workers: dict = dataclasses.field(default_factory=dict)   # path -> host:pid


def tag_on_beam(tagger, files: list[str], options: LibraryOptions, pipeline_options: str, log=None) -> BeamResult:
    """Tag `files` into options.output_dir on Beam (see the module docstring); returns what
    happened, as tag_library does. LibraryBusy where another run holds the output folder."""
    check_output_dir(options.output_dir)
    require_beam()
    files = [os.fspath(f) for f in files]
    log = log or Log(options)
    result = BeamResult()
    return run_library(tagger, files, options, log, result,
                       lambda state: _tag_on_beam(tagger, files, options, pipeline_options, log, state, result))


def _tag_on_beam(tagger, files: list[str], options: LibraryOptions, pipeline_options: str, log, state,
                 result: BeamResult) -> None:
    started = time.perf_counter()
    out = options.output_dir
    remove_leftovers(out)
    _remove_killed_runs(out)
    plan = plan_library(tagger, files, options, log, state)
    result.skipped.extend(plan.done)
    log.say(f"{len(files)} file(s): {len(plan.todo)} for the model, {len(plan.derive)} to derive from stored scores, "
            f"{len(result.skipped)} already done; on Beam ({pipeline_options})")
    stored = _stored_analyses(plan, state)
    for path in [*plan.derive, *(p for p in plan.todo if p not in plan.check)]:
        state.forget_decision(plan.names[path])   # their outputs are redone: until recorded again, they have none
    run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    # What the workers report (failures, unchanged files), read back by the driver and then
    # removed; named by the driver's process, so that a run killed part way is told from one still
    # running when its folder is found later.
    run_dir = os.path.join(out, STATE_DIR, f"beam-{run}{TMP_MARK}{os.getpid()}")
    with failures_named("tagging"):
        _run_pipeline(tagger, options, plan, stored, pipeline_options, run_dir)
    rows = _collect(options, plan, result, state, stored, os.path.join(out, FAILED, f"{run}.jsonl"), run_dir, log)
    if result.workers:
        counts = collections.Counter(result.workers.values())
        log.say(f"written by {len(counts)} worker process(es): " +
                ", ".join(f"{w} ({n} file(s))" for w, n in sorted(counts.items())))
    finish_run(tagger, files, options, state, plan, result, log)
    result.rows, result.seconds = rows, time.perf_counter() - started


def _stored_analyses(plan: LibraryPlan, state) -> dict:
    """{path: {"content", "arrays"}} of the files to derive or to check: what a worker needs to
    read their stored analysis (its arrays' file in OUT, None where none is stored), from the
    library's database."""
    found = {}
    for path in [*plan.derive, *plan.check]:
        content = plan.check[path][1] if path in plan.check else plan.contents[path]
        analysis = state.analysis(content, plan.settings["model"])
        found[path] = {"content": content, "arrays": None if analysis is None else analysis.arrays}
    return found


def check_output_dir(out: str) -> None:
    """A URL OUT is refused, saying why and what to do instead."""
    if "://" in out:
        raise ValueError(f"{out}: on Beam the driver plans from the library's database in OUT and writes the "
                         "library's summary itself, so OUT must be a path the driver and the workers can read and "
                         "write: a local disk, NFS, or the bucket mounted with gcsfuse or s3fs (docs/scale-out.md)")


def _remove_killed_runs(out: str) -> None:
    """What runs killed part way left in OUT/.jaxtag: their run folders, and the temporary
    folders of an older version's dead-letter output (these name no process: removed when no run
    is alive)."""
    folder = os.path.join(out, STATE_DIR)
    runs = [n for n in (os.listdir(folder) if os.path.isdir(folder) else []) if n.startswith("beam-")]
    alive = [n for n in runs if TMP_MARK in n and not left_by_dead_process(n)]   # (unmarked: an older version's)
    for name in runs:
        if name not in alive:
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    failed = os.path.join(out, FAILED)
    if not alive and os.path.isdir(failed):
        for name in os.listdir(failed):
            if name.startswith("beam-temp-"):
                shutil.rmtree(os.path.join(failed, name), ignore_errors=True)


def _report_fn():
    beam = require_beam()

    class Report(beam.DoFn):
        """The workers' reports (one JSON object each) -> one JSON-lines file per bundle in the
        run's folder, through Beam's FileSystems (a temporary name, then a rename). A plain
        ParDo, with no side input, so every runner runs it alike (a retried bundle writes its
        lines again: the driver reads each file's last report)."""

        def __init__(self, folder: str):
            self.folder = folder

        def start_bundle(self):
            self.lines = []

        def process(self, report):
            self.lines.append(json.dumps(report))

        def finish_bundle(self):
            if self.lines:
                from apache_beam.io.filesystems import FileSystems
                _write_text(FileSystems.join(self.folder, f"{uuid.uuid4().hex}.jsonl"), "\n".join(self.lines) + "\n")
                self.lines = []

    return Report


def _write_text(path: str, text: str) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from jaxtag.files import temporary_name
    temporary = temporary_name(path)
    with FileSystems.create(temporary, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(text.encode("utf-8"))
    FileSystems.rename([temporary], [path])


def _run_pipeline(tagger, options: LibraryOptions, plan: LibraryPlan, stored: dict, pipeline_options: str,
                  run_dir: str) -> None:
    import logging
    beam = require_beam()
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from jaxtag.beam import pipeline_options as make_options
    logging.getLogger("apache_beam").setLevel(logging.WARNING)   # the runner's and workers' chatter
    # The model by its spec (each worker builds it once); the decisions by the driver's policy itself.
    spec, policy = tagger.spec, tagger.policy
    settings, write = plan.settings, _write_file_fn()
    with beam.Pipeline(options=make_options(pipeline_options)) as p:
        todo = [{"path": path, "name": plan.names[path], "expected": plan.check[path][1] if path in plan.check else None,
                 "then": plan.check[path][0] if path in plan.check else None, **stored.get(path, {})}
                for path in plan.todo]
        decoded = (p | "Files" >> beam.Create(todo) | "Spread" >> beam.Reshuffle()
                   | "Decode" >> beam.ParDo(_decode_file_fn()(dataclasses.asdict(tagger.frontend)))
                   .with_outputs("facts", "unchanged", "derive", "failed", main="windows"))
        features = (decoded.windows | "Model" >> RunInference(KeyedModelHandler(
            window_features_handler(spec, tagger.chunk_windows)))
            | "ByFile" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1].inference))))
        grouped = {"features": features, "facts": decoded.facts} | "Regroup" >> beam.CoGroupByKey()
        written = grouped | "Write" >> beam.ParDo(write(spec, policy, options, settings)).with_outputs(
            "failed", main="done")
        to_derive = [{"path": path, "name": plan.names[path], **stored[path]} for path in plan.derive]
        derived = (((p | "ToDerive" >> beam.Create(to_derive) | "SpreadDerive" >> beam.Reshuffle()), decoded.derive)
                   | "AllToDerive" >> beam.Flatten()
                   | "Derive" >> beam.ParDo(write(spec, policy, options, settings, derive=True))
                   .with_outputs("failed", main="done"))
        reports = (
            (decoded.failed, written.failed, derived.failed) | "Failures" >> beam.Flatten()
            | "AsFailed" >> beam.Map(lambda f: {"kind": "failed", **f}),
            decoded.unchanged | "AsUnchanged" >> beam.Map(lambda d: {"kind": "unchanged", **d}))
        _ = reports | "Reports" >> beam.Flatten() | "Report" >> beam.ParDo(_report_fn()(run_dir))


def _collect(options: LibraryOptions, plan: LibraryPlan, result: BeamResult, state, stored: dict, dead_letter: str,
             run_dir: str, log) -> dict:
    """What the workers reported and published: failures (kept in the dead-letter file; an
    analysis found unreadable is forgotten, so the next run analyses its audio again), unchanged
    files (their stamps brought up to date), the journal's entries (recorded in the database; the
    moves followed); returns the rows of every file done now or before."""
    from apache_beam.io.filesystems import FileSystems
    reports = [json.loads(line) for line in _read_lines(FileSystems, FileSystems.join(run_dir, ""))]
    shutil.rmtree(run_dir, ignore_errors=True)
    failed = {r["path"]: r for r in reports if r["kind"] == "failed"}
    if failed:
        os.makedirs(os.path.dirname(dead_letter), exist_ok=True)
        _write_text(dead_letter, "".join(json.dumps({"path": path, "problem": r["problem"]}) + "\n"
                                         for path, r in failed.items()))
    for path, report in failed.items():
        if report.get("unreadable"):
            forget_unreadable(state, options.output_dir, stored[path]["content"])
        result.failed[path] = report["problem"]
        log.failed(path, report["problem"])
    rows = dict(plan.done)
    for item in {r["path"]: r for r in reports if r["kind"] == "unchanged"}.values():
        path, stamp = item["path"], item["stamp"]
        state.restamp(os.path.abspath(path), stamp["size"], stamp["mtime_ns"])
        rows[path] = summary.row_from_json(plan.check[path][2]["summary"])
        result.skipped.append(path)
        log.unchanged(path)
    for entry in import_journal(state, options.output_dir):
        path = entry["path"]
        rows[path] = summary.row_from_json(entry["decisions"]["summary"])
        result.workers[path] = entry["worker"]
        if entry["analysis"] is None:
            result.derived.append(path)
            if path in plan.moved:
                follow_move(state, options, plan.moved[path], path, plan.names[path], result, log)
        else:
            result.tagged.append(path)
            result.audio_seconds += entry["analysis"]["duration"]
    return rows


def _read_lines(FileSystems, prefix: str) -> list[str]:
    """The lines of the files whose names start with `prefix` (none there: no lines)."""
    lines = []
    for match in FileSystems.match([prefix + "*"])[0].metadata_list:
        if TMP_MARK in os.path.basename(match.path):
            continue
        with FileSystems.open(match.path) as f:
            lines += [line for line in f.read().decode("utf-8").splitlines() if line.strip()]
    return lines
