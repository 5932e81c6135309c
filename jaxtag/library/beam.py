"""Tagging a library or an archive on Apache Beam:
`python -m jaxtag.tag DIR_OR_LIST --output_dir=OUT --beam_pipeline_options="runner=...,..."`.

The same job as jaxtag.library.run, on Beam's workers instead of one machine's processes:

1. The driver lists the files (a directory, or a text file of paths: an archive), names their
   outputs and plans each from its record and stored scores (DONE, DERIVE or MODEL, with a content
   check for files whose size or mtime changed) exactly as the local run does.
2. `DecodeFile` (a DoFn, on the workers) checks or decodes a file into mel frames, finds its tempo
   and emits its windows, keyed by (file, window), and its facts (length, envelope, stamp).
3. `RunInference` with `WindowFeatures` (a jaxtag ModelHandler: the model is built in
   `load_model` from a pretrained name or a run's checkpoint, so nothing heavy is pickled; one
   model per worker process) encodes windows of many files together, in batches of the model's
   chunk size.
4. The windows' features are grouped back by file with its facts; `WriteFile` runs the
   across-window stage, decided by the driver's DecisionPolicy itself (sent with the DoFn), and
   writes the file's outputs, stored scores and, last, its record, each staged locally and
   published through Beam's FileSystems (a temporary name, then a rename), so the workers can
   write to a bucket mounted on the driver. Files planned DERIVE are written the same way from
   their stored scores.
5. The workers report what happened (a file failed and why, a file found unchanged, which worker
   process wrote a file) through one plain ParDo writing a JSON-lines file per bundle in the run's
   folder; the driver reads them, lists the failures in OUT/.jaxtag/failed/RUN.jsonl (the
   dead-letter output; the others go on), then writes library.csv, library.json and index.html
   from the records and updates the similarity index.

A run killed part way and rerun skips the files whose records are written. Scores equal the local
run's (the same windows through the same network); tested with the DirectRunner in
multi-processing mode (tests/test_beam.py) and on a Dask cluster (runner=dask, tests/test_dask.py).
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
from jaxtag.tagging import decoding, tempo as tempo_lib
from jaxtag.library import summary
from jaxtag.library.run import (DERIVE, LibraryOptions, LibraryPlan, LibraryResult, plan_library, stored_taggram,
                                    write_file)
from jaxtag.library.arrays import STORE, read_record, record_path, refresh_record

FAILED = os.path.join(".jaxtag", "failed")
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
        to derive again); "failed": (path, problem)."""

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
                    # Only retagged, touched or copied: its outputs derived again, or its record's stamp
                    # brought up to date (by the driver).
                    output = "derive" if item.get("then") == DERIVE else "unchanged"
                    yield beam.pvalue.TaggedOutput(output, {"path": path, "name": name, "stamp": decoded.stamp})
                    return
                if isinstance(decoded, decoding.DecodeFailure):
                    yield beam.pvalue.TaggedOutput("failed", (path, decoded.problem))
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
                yield beam.pvalue.TaggedOutput("failed", (path, problem_of(e)))
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
        """A file's windows' features and facts (or, to derive, its name) -> its outputs, stored
        scores and record, published to OUT, decided by the driver's DecisionPolicy; emits
        {"path", "worker"}, or "failed": (path, problem)."""

        def __init__(self, spec: dict, policy, output_dir: str, options: LibraryOptions, settings: dict,
                     derive: bool = False):
            self.spec, self.policy, self.output_dir, self.options, self.settings, self.derive = \
                spec, policy, output_dir, options, settings, derive

        def process(self, element):
            tagger = tagger_of(self.spec, self.policy)
            staging = tempfile.mkdtemp(prefix="jaxtag-beam-out-")
            try:
                if self.derive:
                    path, name = element["path"], element["name"]
                    stored, source, taggram = stored_taggram(tagger, self.output_dir, name, path, read=_read_store)
                    embeddings, warnings, new = stored["embeddings"], stored["warnings"], False
                else:
                    name, grouped = element
                    facts = grouped["facts"][0]
                    path = facts["path"]
                    features = dict(grouped["features"])
                    if len(features) != facts["n_windows"]:
                        raise RuntimeError(f"{len(features)} of its {facts['n_windows']} windows came back")
                    scores, embeddings = tagger.across_windows(np.stack([features[k] for k in range(facts["n_windows"])]),
                                                               embeddings=True)
                    from jaxtag.tagging.outputs import shown_path
                    taggram = tagger.taggram(shown_path(path), facts["duration"], facts["n_frames"], scores,
                                             facts["envelope"])
                    taggram = dataclasses.replace(taggram, tempo=tempo_lib.Tempo(*facts["tempo"]))
                    source = {"path": os.path.abspath(path), **facts["stamp"]}
                    warnings, new = facts["warnings"], True
                final = os.path.join(self.output_dir, name)
                write_file(self.options, staging, name, path, taggram, embeddings, source, warnings, self.settings,
                           new_scores=new, link_from=os.path.dirname(final))
                publish(staging, self.output_dir, name)
                yield {"path": path, "worker": worker_name()}
            except Exception as e:  # noqa: BLE001 - one file's failure must not stop the others
                yield beam.pvalue.TaggedOutput("failed", (element["path"] if self.derive else
                                                          _path_of(element), problem_of(e)))
            finally:
                shutil.rmtree(staging, ignore_errors=True)

    return WriteFile


def _path_of(element) -> str:
    name, grouped = element
    facts = grouped.get("facts") or []
    return facts[0]["path"] if facts else name


# -- OUT through Beam's FileSystems ------------------------------------------------------------------

def publish(staging: str, output_dir: str, name: str) -> None:
    """Copy a file's outputs from the local staging folder to OUT through Beam's FileSystems
    (local disk, gs://, s3://, hdfs://...): each under a temporary name, then renamed; its record
    last, so a record is never there without its outputs."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    from jaxtag.files import temporary_name
    record = record_path(staging, name)
    files = [os.path.join(root, f) for root, _, names in os.walk(staging) for f in names]
    for local in sorted(files, key=lambda p: p == record):          # the record last
        final = FileSystems.join(output_dir, *os.path.relpath(local, staging).split(os.sep))
        temporary = temporary_name(final)     # a killed worker's leftover is cleaned up by the next run
        with open(local, "rb") as src, FileSystems.create(temporary, compression_type=CompressionTypes.UNCOMPRESSED) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        FileSystems.rename([temporary], [final])


def _read_store(output_dir: str, name: str):
    """store.read_store through Beam's FileSystems."""
    from apache_beam.io.filesystems import FileSystems
    from jaxtag.library import arrays as store
    path = FileSystems.join(output_dir, STORE, *f"{name}.npz".split("/"))
    try:
        with FileSystems.open(path) as f:
            data = f.read()
    except Exception:  # noqa: BLE001 - gone or unreadable: the caller says so
        return None
    folder = tempfile.mkdtemp(prefix="jaxtag-beam-store-")
    try:
        local = store.store_path(folder, name)
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as f:
            f.write(data)
        return store.read_store(folder, name)
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
    happened, as tag_library does."""
    from jaxtag.library.run import Log, update_similarity, write_library
    started = time.perf_counter()
    log = log or Log(options)
    result = BeamResult()
    out = options.output_dir
    check_output_dir(out)
    plan = plan_library(tagger, files, options, log)
    result.skipped.extend(plan.done)
    log.say(f"{len(files)} file(s): {len(plan.todo)} for the model, {len(plan.derive)} to derive from stored scores, "
            f"{len(result.skipped)} already done; on Beam ({pipeline_options})")
    _remove_killed_runs(out)
    run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    # What the workers report (failures, unchanged files, who wrote what), read back by the driver
    # and then removed; named by the driver's process, so that a run killed part way is told from
    # one still running when its folder is found later.
    run_dir = os.path.join(out, ".jaxtag", f"beam-{run}{TMP_MARK}{os.getpid()}")
    with failures_named("tagging"):
        _run_pipeline(tagger, options, plan, pipeline_options, run_dir)
    rows = _collect(files, plan, result, out, os.path.join(out, FAILED, f"{run}.jsonl"), run_dir, log)
    if result.workers:
        counts = collections.Counter(result.workers.values())
        log.say(f"written by {len(counts)} worker process(es): " +
                ", ".join(f"{w} ({n} file(s))" for w, n in sorted(counts.items())))
    similar = update_similarity(tagger, options, plan.names, files, rows, result, log)
    write_library(out, files, rows, result, tagger, similar)
    result.rows, result.seconds = rows, time.perf_counter() - started
    return result


def check_output_dir(out: str) -> None:
    """A URL OUT is refused, saying why and what to do instead."""
    if "://" in out:
        raise ValueError(f"{out}: on Beam the driver plans from OUT's records and writes the library's summary "
                         "itself, so OUT must be a path the driver and the workers can read and write: a local disk, "
                         "NFS, or the bucket mounted with gcsfuse or s3fs (docs/scale-out.md)")


def _remove_killed_runs(out: str) -> None:
    """What runs killed part way left in OUT/.jaxtag: their run folders, and the temporary
    folders of an older version's dead-letter output (these name no process: removed when no run
    is alive)."""
    folder = os.path.join(out, ".jaxtag")
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


def _run_pipeline(tagger, options: LibraryOptions, plan: LibraryPlan, pipeline_options: str, run_dir: str) -> None:
    import logging
    beam = require_beam()
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from jaxtag.beam import pipeline_options as make_options
    logging.getLogger("apache_beam").setLevel(logging.WARNING)   # the runner's and workers' chatter
    # The model by its spec (each worker builds it once); the decisions by the driver's policy itself.
    spec, policy = tagger.spec, tagger.policy
    out, settings, write = options.output_dir, plan.settings, _write_file_fn()
    with beam.Pipeline(options=make_options(pipeline_options)) as p:
        todo = [{"path": path, "name": plan.names[path], "expected": plan.check[path][1] if path in plan.check else None,
                 "then": plan.check[path][0] if path in plan.check else None} for path in plan.todo]
        decoded = (p | "Files" >> beam.Create(todo) | "Spread" >> beam.Reshuffle()
                   | "Decode" >> beam.ParDo(_decode_file_fn()(dataclasses.asdict(tagger.frontend)))
                   .with_outputs("facts", "unchanged", "derive", "failed", main="windows"))
        features = (decoded.windows | "Model" >> RunInference(KeyedModelHandler(
            window_features_handler(spec, tagger.chunk_windows)))
            | "ByFile" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1].inference))))
        grouped = {"features": features, "facts": decoded.facts} | "Regroup" >> beam.CoGroupByKey()
        written = grouped | "Write" >> beam.ParDo(write(spec, policy, out, options, settings)).with_outputs(
            "failed", main="done")
        derived = (((p | "ToDerive" >> beam.Create([{"path": path, "name": plan.names[path]} for path in plan.derive])
                     | "SpreadDerive" >> beam.Reshuffle()), decoded.derive) | "AllToDerive" >> beam.Flatten()
                   | "Derive" >> beam.ParDo(write(spec, policy, out, options, settings, derive=True))
                   .with_outputs("failed", main="done"))
        reports = (
            (decoded.failed, written.failed, derived.failed) | "Failures" >> beam.Flatten()
            | "AsFailed" >> beam.Map(lambda f: {"kind": "failed", "path": f[0], "problem": f[1]}),
            decoded.unchanged | "AsUnchanged" >> beam.Map(lambda d: {"kind": "unchanged", **d}),
            written.done | "AsTagged" >> beam.Map(lambda d: {"kind": "tagged", **d}),
            derived.done | "AsDerived" >> beam.Map(lambda d: {"kind": "derived", **d}))
        _ = reports | "Reports" >> beam.Flatten() | "Report" >> beam.ParDo(_report_fn()(run_dir))


def _collect(files: list[str], plan: LibraryPlan, result: BeamResult, out: str, dead_letter: str, run_dir: str,
             log) -> dict:
    """What the workers reported: failures (kept in the dead-letter file), unchanged files (their
    records take the new stamps), who wrote which file; and the rows of every file done now or
    before."""
    from apache_beam.io.filesystems import FileSystems
    reports = [json.loads(line) for line in _read_lines(FileSystems, FileSystems.join(run_dir, ""))]
    failed = {r["path"]: r["problem"] for r in reports if r["kind"] == "failed"}
    if failed:
        os.makedirs(os.path.dirname(dead_letter), exist_ok=True)
        _write_text(dead_letter, "".join(json.dumps({"path": path, "problem": problem}) + "\n"
                                         for path, problem in failed.items()))
    for path, problem in failed.items():
        result.failed[path] = problem
        log.failed(path, problem)
    for item in {r["path"]: r for r in reports if r["kind"] == "unchanged"}.values():
        refresh_record(out, item["name"], plan.check[item["path"]][2], item["path"], item["stamp"])
        result.skipped.append(item["path"])
    derived = set(plan.derive) | {r["path"] for r in reports if r["kind"] == "derived"}
    result.workers = {r["path"]: r["worker"] for r in reports if r["kind"] in ("tagged", "derived")}
    shutil.rmtree(run_dir, ignore_errors=True)
    rows = dict(plan.done)
    for path in files:
        if path in plan.done or path in result.failed:
            continue
        record = read_record(out, plan.names[path])
        if record is not None and record.get("settings") == plan.settings:
            rows[path] = summary.row_from_json(record["summary"])
            if path not in result.skipped:
                (result.derived if path in derived else result.tagged).append(path)
                if path not in derived:
                    result.audio_seconds += rows[path]["duration"]
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
