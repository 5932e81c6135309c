"""Tagging a whole library: `python -m jaxtag.tag DIR ... --output_dir=OUT` (tag_library).

- Worker processes decode files into mel frames ahead of the model (jaxtag.tagging.decoding);
  the model takes a file's windows as their frames arrive, while the rest is still decoded, and
  windows of several files together, in fixed chunks; memory is bounded for any file length
  (audio and frames stream through blocks and a temporary file).
- The model's output for a file (window times, scores, embeddings) is stored first, as an
  analysis addressed by its audio and the model (OUT/.jaxtag/analyses/; jaxtag.library.state).
  Every other output is derived from it by the decision policy (jaxtag.tagging.decisions) and
  written atomically, and the file's decisions are recorded in the library's database last. A
  file being redone loses its decisions first.
- A rerun skips a file whose decisions match the model, the policy and the file's audio; where
  only the policy (--threshold, --smooth, ...) or the outputs asked for changed, it derives them
  again from the stored analysis without the model; a new model or new audio runs the model
  (--force always does). Audio the library knows under another path (moved, renamed, copied,
  restored) is recognised by its content fingerprint and needs no model. A model made of several
  networks (the combined "musicnn") reuses the analyses its networks made of the same audio: a
  file tagged with musicnn-msd gains only musicnn-mtt's run, and one whose networks' analyses are
  all stored needs no model at all; switching back to one network alone is assembled the same way.
  A run killed at any moment and rerun ends with a complete, valid set and redoes only what was
  unfinished. Ctrl-C stops cleanly (exit 130). One run at a time per output folder (RunLock).
- One bad file never stops the others: it is reported on stderr with its problem.
- The precision (jaxtag.tagging.precision) is the library's: every run of a pretrained model
  records the one it ran in, and the command line's default, auto, follows it (choose_precision).
- Files gone from the folders a run covers leave the library. Then every view (library.csv,
  library.json, index.html, the similarity index, the pages' similar lists) is derived from the
  whole library's database, for the run's model and policy (jaxtag.library.views).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
import uuid

import numpy as np

from jaxtag.data import features
from jaxtag.errors import DataError, WorkerStartError, problem_of
from jaxtag.files import TMP_MARK, available_cpus, left_by_dead_process
from jaxtag.library import summary, views
from jaxtag.library.arrays import analyses, read_arrays
from jaxtag.library.journal import import_journal
from jaxtag.library.log import LockedLog, Log
from jaxtag.library.plan import DERIVE, LibraryOptions, plan_library, usable  # noqa: F401 - LibraryOptions: the API
from jaxtag.library.state import LibraryBusy, LibraryState, RunLock
from jaxtag.library.takeover import take_over_old_layout
from jaxtag.library.write import (UnreadableAnalysis, kept_parts, remove, remove_outputs, stored_taggram,
                                  write_file)
from jaxtag.tagging import decoding
from jaxtag.tagging import precision as precision_lib
from jaxtag.tagging.outputs import check_formats, shown_path

POLL_SECONDS = 0.2   # how often the frames of files being decoded are looked at
MAX_QUEUED_WRITES = 4  # files tagged and waiting for the writer thread


@dataclasses.dataclass
class LibraryResult:
    tagged: list = dataclasses.field(default_factory=list)      # the model ran on them
    derived: list = dataclasses.field(default_factory=list)     # outputs derived again from stored scores
    skipped: list = dataclasses.field(default_factory=list)     # outputs already there
    failed: dict = dataclasses.field(default_factory=dict)      # path -> problem (not tagged)
    tags_not_written: dict = dataclasses.field(default_factory=dict)  # path -> problem (--write_tags)
    interrupted: bool = False
    stage_seconds: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(
        ("decode", "features", "model", "writing", "similarity"), 0.0))
    seconds: float = 0.0
    audio_seconds: float = 0.0   # of the files tagged in this run
    worker_peak_rss_mb: float = 0.0  # the largest decoding worker's peak memory
    rows: dict = dataclasses.field(default_factory=dict)  # path -> library row, of every file done (now or before)
    moved: dict = dataclasses.field(default_factory=dict)     # new path -> old path (recognised by its audio)
    gone: list = dataclasses.field(default_factory=list)      # files gone from disk, removed from the library
    unreachable: list = dataclasses.field(default_factory=list)  # roots missing or empty: nothing pruned there
    run: int = 0                                              # its row in the library's runs
    failures_recorded: bool = False                           # by finish_run (run_library's end need not)

    def counts(self) -> dict:
        return {"tagged": len(self.tagged), "derived": len(self.derived), "skipped": len(self.skipped),
                "failed": len(self.failed), "moved": len(self.moved), "gone": len(self.gone),
                "tags_not_written": len(self.tags_not_written), "audio_seconds": round(self.audio_seconds, 3)}

    def summary_line(self, total: int) -> str:
        """What happened to each file, each file counted once (tags not written are counted
        apart: those files are tagged)."""
        parts = [f"tagged {len(self.tagged)}"]
        if self.derived:
            parts.append(f"re-derived {len(self.derived)} from stored scores")
        parts += [f"already done {len(self.skipped)}", f"failed {len(self.failed)} of {total} file(s)"]
        line = ", ".join(parts)
        if self.moved:
            line += f"; {len(self.moved)} moved or renamed (no model)"
        if self.gone:
            line += f"; {len(self.gone)} gone from disk, removed from the library"
        if self.tags_not_written:
            line += f"; tags not written into {len(self.tags_not_written)}"
        return line


@dataclasses.dataclass(eq=False)
class _FileState:
    """A file on its way through the model: its windows go to the batcher as its frames arrive
    (a worker may still be decoding it); it is done when all its windows are encoded."""
    path: str
    frames_path: str
    decoded: decoding.DecodedFile | None = None   # once its decoding has finished
    n_windows: int | None = None                  # known then
    fed: int = 0                                  # windows given to the batcher
    encoded: int = 0
    features: dict = dataclasses.field(default_factory=dict)  # window index -> features
    dropped: bool = False                         # its decoding failed, or its worker died

    @property
    def done(self) -> bool:
        return self.n_windows is not None and self.encoded == self.n_windows


class WindowBatcher:
    """Fills fixed-size chunks of windows from several files and encodes them; a file whose
    windows are all encoded comes back from add() or flush()."""

    def __init__(self, tagger, stats: LibraryResult):
        self.tagger, self.stats = tagger, stats
        self.rows: list[tuple[_FileState, int]] = []   # (file, its window index) per chunk row
        self.windows: list[np.ndarray] = []
        self.compiled = False

    def compile(self) -> None:
        """Compile the model's one chunk shape now, while the workers start and decode (their
        imports alone take seconds), not when the first windows arrive."""
        if not self.compiled:
            self.compiled = True
            f, start = self.tagger.frontend, time.perf_counter()
            self.tagger.encode_chunk(np.zeros((1, f.window_frames, f.n_mels), np.float32))
            self.stats.stage_seconds["model"] += time.perf_counter() - start

    def add(self, state: _FileState, first: int, windows: np.ndarray) -> list[_FileState]:
        done = []
        for k, window in enumerate(windows):
            self.rows.append((state, first + k))
            self.windows.append(window)
            if len(self.rows) == self.tagger.chunk_windows:
                done += self._encode()
        return done

    def flush(self) -> list[_FileState]:
        return self._encode() if self.rows else []

    def _encode(self) -> list[_FileState]:
        start = time.perf_counter()
        features = self.tagger.encode_chunk(np.stack(self.windows))
        self.stats.stage_seconds["model"] += time.perf_counter() - start
        done = []
        for (state, index), feature in zip(self.rows, features):
            if state.dropped:
                continue
            state.features[index] = feature
            state.encoded += 1
            if state.done:
                done.append(state)
        self.rows, self.windows = [], []
        return done


def _feed(tagger, state: _FileState, batcher: WindowBatcher, starts: np.ndarray, upto: int,
          done: list[_FileState]) -> None:
    """Give the batcher windows state.fed .. upto-1 of a file (`starts`: their first frames), read
    from its frames file a chunk at a time; the files this completes go into `done` (kept there
    if a later read fails)."""
    f = tagger.frontend
    while state.fed < upto:
        group = starts[state.fed:min(upto, state.fed + tagger.chunk_windows)]
        frames = decoding.read_frames(state.frames_path, f.n_mels, int(group[0]),
                                      int(group[-1]) + f.window_frames - int(group[0]))
        first, state.fed = state.fed, state.fed + len(group)
        done += batcher.add(state, first, tagger.windows(frames, group - group[0]))


def _feed_arrived(tagger, state: _FileState, batcher: WindowBatcher) -> list[_FileState]:
    """While a worker decodes a file: feed the batcher whole chunks of the windows whose frames have
    all arrived. Those are the regular windows (every hop); the one aligned to the file's end, if
    any, waits for the file's length."""
    f, done = tagger.frontend, []
    try:
        arrived = os.path.getsize(state.frames_path) // (4 * f.n_mels)
        ready = (arrived - f.window_frames) // f.window_hop + 1 if arrived >= f.window_frames else 0
        if ready - state.fed >= tagger.chunk_windows:
            _feed(tagger, state, batcher, np.arange(ready) * f.window_hop, ready, done)
    except OSError:  # not begun, or failed and removed: its result will say
        pass
    return done


def tag_library(tagger, files: list[str], options: LibraryOptions, log=None, decode=None) -> LibraryResult:
    """Tag every file into options.output_dir (see the module docstring); returns what happened.
    decode: the worker function (default decoding.decode_file). LibraryBusy where another run
    holds the output folder."""
    files = [os.fspath(f) for f in files]
    log = log or Log(options)
    result = LibraryResult()
    return run_library(tagger, files, options, log, result,
                       lambda state: _tag(tagger, files, options, log, decode, state, result))


def run_library(tagger, files: list[str], options: LibraryOptions, log, result, body):
    """The frame of a run, local or on Beam (jaxtag.library.beam): one at a time per output folder
    (RunLock), the library's database opened, the earlier layout taken over and what a Beam run
    killed part way published recorded (journal.import_journal), the run's row begun and ended,
    and a pretrained model's precision recorded as the library's (choose_precision); body(state)
    does the work into `result`, which is returned."""
    check_formats(options.formats)
    os.makedirs(options.output_dir, exist_ok=True)
    lock = RunLock(options.output_dir)
    lock.acquire(options.wait_for_lock)
    try:
        with LibraryState(options.output_dir) as state:
            if options.follows_record:
                check_record_unchanged(state, tagger, options.output_dir)
            take_over_old_layout(options.output_dir, state, log)
            import_journal(state, options.output_dir)
            result.run = run = state.begin_run(tagger.fingerprint, tagger.model_name, len(files))
            if _is_pretrained(tagger):   # the library's precision: choose_precision
                state.set_precision(tagger.precision)
            status = "failed"   # unless body returns (a bug, or the pipeline failed)
            try:
                body(state)
                status = "interrupted" if result.interrupted else "finished"
            finally:   # (for runs that stopped before finish_run recorded them)
                if not result.failures_recorded:
                    record_failures(state, run, options, files, result)
                state.end_run(run, result.counts(), status)
            return result
    finally:
        lock.release()


def _is_pretrained(tagger) -> bool:
    """Whether the tagger is a pretrained model's (its spec names one): its precision is the
    library's record; a trained run's float32 is not."""
    return "pretrained" in (getattr(tagger, "spec", None) or {})


def check_record_unchanged(state, tagger, output_dir: str) -> None:
    """LibraryBusy where the library now records a precision other than the one auto chose for
    this run from its record: another run recorded it between the choice (before the model was
    made) and this run's lock (one that waited for the lock, or another machine's). Running on
    would analyse the whole library again in the other precision; run again instead, and auto
    follows the new record."""
    recorded = state.precision()
    if _is_pretrained(tagger) and recorded not in (None, tagger.precision):
        raise LibraryBusy(f"{output_dir}: another run recorded precision {recorded} for this library while this "
                          f"run was starting in {tagger.precision}; nothing was tagged: run again, and it "
                          f"follows the library's {recorded}")


def choose_precision(output_dir: str, requested: str, pretrained: bool,
                     float32_option: str = "--precision=float32") -> precision_lib.Choice:
    """The precision library tagging runs in on `output_dir` for a request of
    jaxtag.tagging.precision.PRECISIONS (library_precision): "auto" follows the precision the
    library records (LibraryState.precision), and chooses for this CPU where it records none; an
    explicit one wins. The record is read here, before the model is made, and written by the run
    (run_library, under the run lock): every run of a pretrained model records the precision it ran
    in. pretrained: the model is a pretrained musicnn (no --workdir). ValueError where the
    precision asked for cannot run (bfloat16 for a trained model) or the record is unknown;
    DataError where the database cannot be read."""
    state = LibraryState.existing(output_dir)
    recorded = None
    if state is not None:
        with state:
            recorded = state.precision()
    return precision_lib.library_precision(requested, recorded, pretrained, library=output_dir,
                                           float32_option=float32_option)


def _tag(tagger, files, options, log, decode, state, result) -> None:
    started = time.perf_counter()
    plan = plan_library(tagger, files, options, log, state, reuse=True)
    result.stage_seconds["plan"] = time.perf_counter() - started
    rows = dict(plan.done)
    result.skipped.extend(plan.done)
    log.plan(len(files), len(plan.todo) + len(plan.partial), len(plan.derive) + len(plan.assemble) - len(plan.library),
             len(plan.partial), len(plan.library))
    tmp_dir = _fresh_tmp_dir(options.output_dir)
    # A file's outputs are written on this thread while the model goes on with the next files
    # (the picture is most of it; the model would wait for it otherwise).
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxtag-writer")
    context = _RunContext(tagger, plan.names, options, plan.settings, rows, result, LockedLog(log),
                          decode or decoding.decode_file, writer, plan.check, state, plan.contents, plan.moved)
    if plan.todo or plan.partial:  # while the model compiles and the workers start, not on the first file's way out
        writer.submit(_warm_up_writer, tagger)
    try:
        for path in plan.derive:  # no model: the writer thread derives them while the model starts
            _queue_write(context, _derive_outputs, path)
        for path in plan.assemble:  # no model either: assembled from the networks' stored analyses
            _queue_write(context, _assemble_outputs, path)
        _run(context, plan.todo, tmp_dir)
        for fingerprint in dict.fromkeys(plan.partial.values()):  # one network only, the others' stored
            _run(dataclasses.replace(context, runner=tagger.part_tagger(fingerprint)),
                 [p for p, fp in plan.partial.items() if fp == fingerprint], tmp_dir)
        _wait_for_writes(context)
        if context.redo:   # stored analyses found unreadable on the way: the model redoes them now
            _run(context, list(dict.fromkeys(context.redo)), tmp_dir)
            _wait_for_writes(context)
        if options.write_tags:  # the files done before: their tags (nothing is written where they are there)
            for path in result.skipped:
                _write_file_tags(context, path)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        # Interrupted: the write under way ends (its outputs are atomic, its decisions last); the
        # files queued behind it have none and are redone by the next run.
        writer.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    finish_run(tagger, files, options, state, plan, result, context.log)
    result.rows, result.seconds = rows, time.perf_counter() - started


def finish_run(tagger, files: list[str], options: LibraryOptions, state, plan, result, log) -> None:
    """The end of a run, local or on Beam, once every file's decisions are recorded: the files gone
    from the folders it covered pruned (not after an interruption), and the views of the whole
    library written for this run's model and policy (library.json, library.csv, index.html, the
    similarity index and the pages' similar lists)."""
    start = time.perf_counter()
    if not result.interrupted:
        prune_gone(state, options, files, result, log)
    record_failures(state, result.run, options, files, result)   # library.json lists the library's
    failed = {path: f["problem"] for path, f in state.failures().items()}
    result.stage_seconds["prune"] = time.perf_counter() - start
    start = time.perf_counter()
    view, others = views.library_rows(state, plan.settings)
    state.set_meta("view", json.dumps(plan.settings, sort_keys=True))
    result.stage_seconds["summary"] = time.perf_counter() - start
    similar = {} if result.interrupted else views.update_similarity(
        options.output_dir, tagger, options.formats, view, bool(result.gone or result.moved),
        [plan.names[p] for p in result.tagged + result.derived], result.stage_seconds, log)
    start = time.perf_counter()
    views.write_library(options.output_dir, view, tagger, failed, result.tags_not_written, similar, others)
    result.stage_seconds["summary"] += time.perf_counter() - start


def prune_gone(state, options: LibraryOptions, files: list[str], result, log) -> None:
    """Files of the library gone from the folders this run covered (the roots given, and the
    folders of the files given) leave it: their outputs and rows (their analyses stay until
    `python -m jaxtag.library OUT --clean`). A root that is missing, or holds none of the audio
    files the library knows there (an unmounted drive's empty mount point), prunes nothing and is
    reported."""
    covered = _covered(options, files)
    records = state.records(summaries=False)
    # The records under each covered folder (in the records' order): those it is a folder above.
    # Each record's folders are looked up, not each folder's records scanned (a run over a library
    # covers every album's folder).
    under_of = {root: [] for root in covered}
    for r in records.values():
        folder = os.path.dirname(r["source"]["path"])
        while True:
            if folder in under_of:
                under_of[folder].append(r)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
    exists = {}
    gone = []
    for root in sorted(covered):
        under = under_of[root]
        if not under:
            continue
        missing = []
        for r in under:
            path = r["source"]["path"]
            if path not in exists:
                exists[path] = os.path.exists(path)
            if not exists[path]:
                missing.append(r)
        if len(missing) == len(under) and not _holds_audio(root):
            log.say(f"warning: {root} is missing or holds no audio now (an unmounted drive?): "
                    f"the {len(under)} file(s) the library knows there are kept")
            result.unreachable.append(root)
            continue
        gone += missing
    seen = set()
    for record in gone:
        if record["source"]["path"] in seen:
            continue
        seen.add(record["source"]["path"])
        remove_outputs(options.output_dir, record)
        log.gone(record["source"]["path"])
        result.gone.append(record["source"]["path"])
    state.remove_files(sorted(seen))


def record_failures(state, run: int, options: LibraryOptions, files: list[str], result) -> None:
    """The files this run could not tag into the library's failures (`python -m jaxtag.library
    OUT` lists them), in one transaction; the failures of files tagged, derived, done or gone since
    are forgotten, and so are those of files no longer there in the folders the run covered
    (unless it was interrupted, or the folder is unreachable: prune_gone)."""
    done = [*result.tagged, *result.derived, *result.skipped, *result.gone, *result.moved.values()]
    cleared = [os.path.abspath(p) for p in done]
    if not result.interrupted:
        covered = _covered(options, files) - set(result.unreachable)
        cleared += [p for p in state.failures() if any(_under(p, root) for root in covered) and not os.path.exists(p)]
    state.record_failures(run, {os.path.abspath(p): problem for p, problem in result.failed.items()}, cleared)
    result.failures_recorded = True


def _covered(options: LibraryOptions, files: list[str]) -> set[str]:
    """The folders a run covers: the roots given and the folders of the files given."""
    return {os.path.abspath(r) for r in options.roots} | {os.path.dirname(os.path.abspath(f)) for f in files}


def _under(path: str, root: str) -> bool:
    return os.path.dirname(path) == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _holds_audio(root: str) -> bool:
    from jaxtag.tagging.outputs import find_audio
    try:
        return os.path.isdir(root) and bool(find_audio([root]))
    except (OSError, ValueError):
        return False


@dataclasses.dataclass
class _RunContext:
    tagger: object
    names: dict
    options: LibraryOptions
    settings: dict
    rows: dict          # path -> summary row, of every file done (now or before)
    result: LibraryResult
    log: object
    decode: object
    writer: concurrent.futures.ThreadPoolExecutor
    check: dict          # path -> (DONE or DERIVE, content fingerprint, record): files to check first
    state: object = None   # the library's database (jaxtag.library.state.LibraryState)
    contents: dict = dataclasses.field(default_factory=dict)  # path -> its audio's content fingerprint, where known
    moved: dict = dataclasses.field(default_factory=dict)     # path -> the record of the same audio elsewhere
    redo: list = dataclasses.field(default_factory=list)      # paths whose stored analysis could not be read
    runner: object = None  # the tagger whose networks run (the tagger, or one network of it: plan.partial)
    writes: collections.deque = dataclasses.field(default_factory=collections.deque)

    def __post_init__(self):
        self.runner = self.tagger if self.runner is None else self.runner


def _run(c: _RunContext, todo: list[str], tmp_dir: str) -> None:
    """Decode `todo` in worker processes (a few files ahead) and tag them as they come. If a
    worker process dies (a decoder crash, the OOM killer), the files it may have held are retried
    one at a time, so the one that kills its worker is named and the others are tagged."""
    workers = c.options.workers or available_cpus()
    batcher = WindowBatcher(c.runner, c.result)
    queue = list(todo)
    while queue:
        suspects, queue = _pool_pass(c, queue, batcher, tmp_dir, workers)
        for path in suspects:
            if _pool_pass(c, [path], batcher, tmp_dir, 1)[0]:
                _fail(c, path, "decoding it killed the worker process (a crash in the audio decoder, or out of memory)")
    for state in batcher.flush():
        _finish(c, state)


def _pool_pass(c: _RunContext, files: list[str], batcher, tmp_dir: str, workers: int):
    """Decode files in a pool of `workers` processes, a few ahead, tagging each as it comes.
    Returns (the files in flight when a worker died, the files not started then)."""
    frontend = dataclasses.asdict(c.runner.frontend)
    basis = features.mel_basis(c.runner.frontend)
    context = multiprocessing.get_context("spawn")  # a forked JAX process is not safe
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=decoding.init_worker)
    started = pool.submit(decoding.worker_started)
    queue, pending = list(files), {}  # future -> _FileState
    try:
        while queue or pending:
            while queue and len(pending) < workers + 1:  # bounded read-ahead
                state = _FileState(queue[0], os.path.join(tmp_dir, f"{uuid.uuid4().hex}.f32"))
                args = (state.path, frontend, state.frames_path, basis)
                try:
                    if state.path in c.check:
                        future = pool.submit(decoding.check_then_decode, c.decode, c.check[state.path][1], *args)
                    else:
                        future = pool.submit(c.decode, *args)
                except concurrent.futures.process.BrokenProcessPool:
                    # A worker died while this thread handled another file: the files it may have
                    # held are in flight; this one never started.
                    return _pool_broke(started, list(pending.values())), queue
                queue.pop(0)
                pending[future] = state
            batcher.compile()
            finished, _ = concurrent.futures.wait(pending, timeout=POLL_SECONDS,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                state = pending.pop(future)
                try:
                    decoded = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    return _pool_broke(started, [state, *pending.values()]), queue
                if isinstance(decoded, decoding.Unchanged):
                    _take_unchanged(c, decoded)
                    continue
                for done in _take_decoded(c, state, decoded, batcher):
                    _finish(c, done)
            for state in list(pending.values()):  # the model need not wait for a long file's end
                for done in _feed_arrived(c.runner, state, batcher):
                    _finish(c, done)
        pool.shutdown()
        return [], []
    except BaseException:
        # Ctrl-C (or a bug): stop now, not after the files being decoded.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        raise
    finally:
        # Wait for the pool's manager thread even here: one still closing its wake-up pipe at
        # interpreter exit races concurrent.futures' exit hook (CPython 3.11: "OSError: Bad file
        # descriptor" after Ctrl-C). The workers are terminated above, so this is quick.
        pool.shutdown(wait=True, cancel_futures=True)


def _pool_broke(started: concurrent.futures.Future, in_flight: list) -> list[str]:
    """A worker died: the files in flight (their windows in the batcher are passed over), to be
    retried one at a time. WorkerStartError if no worker ever started."""
    _check_workers_started(started)
    for state in in_flight:
        state.dropped = True
    return [state.path for state in in_flight]


def _take_unchanged(c: _RunContext, unchanged) -> None:
    """A file whose size or mtime changed holds the same audio (a worker checked): done, with its
    record's stamp brought up to date, or its outputs derived again from its stored scores (so
    too a file new here whose audio the library has analysed before)."""
    plan, _, record = c.check[unchanged.path]
    c.contents[unchanged.path] = unchanged.stamp["content"]
    if plan == DERIVE:
        _queue_write(c, _derive_outputs, unchanged.path)
        return
    c.state.restamp(os.path.abspath(unchanged.path), unchanged.stamp["size"], unchanged.stamp["mtime_ns"])
    c.rows[unchanged.path] = summary.row_from_json(record["summary"])
    c.result.skipped.append(unchanged.path)
    c.log.unchanged(unchanged.path)


def _check_workers_started(started: concurrent.futures.Future) -> None:
    """After the pool broke: raise WorkerStartError when no worker ever ran a task. The usual
    cause: a script that calls tag_library at its top level; each worker, started afresh
    ("spawn"), imports the script and so calls it again, which Python stops."""
    concurrent.futures.wait([started], timeout=10)   # the pool marks all its futures broken at once
    if started.done() and not started.cancelled() and started.exception() is None:
        return
    raise WorkerStartError(
        "the decoding worker processes could not start (their error is printed above). A script "
        "that calls jaxtag's tag_library must call it under `if __name__ == \"__main__\":` - each worker "
        "imports the script afresh, which must not tag again.")


def _fail(c: _RunContext, path: str, problem: str, done: bool = True) -> None:
    c.result.failed[path] = problem
    c.log.failed(path, problem, done)


def _take_decoded(c: _RunContext, state: _FileState, decoded, batcher: WindowBatcher) -> list[_FileState]:
    """A file's decoding has finished: feed the batcher the rest of its windows; the files this
    completes (the file itself when all its windows were encoded already)."""
    if isinstance(decoded, decoding.DecodeFailure):
        state.dropped = True
        _fail(c, decoded.path, decoded.problem)
        return []
    c.result.stage_seconds["decode"] += decoded.decode_seconds
    c.result.stage_seconds["features"] += decoded.feature_seconds
    c.result.worker_peak_rss_mb = max(c.result.worker_peak_rss_mb, decoded.worker_peak_rss_mb)
    for warning in decoded.warnings:
        c.log.warn(decoded.path, warning)
    starts = c.runner.window_starts(decoded.n_frames)
    state.decoded, state.n_windows = decoded, len(starts)
    done = []
    _feed(c.runner, state, batcher, starts, len(starts), done)
    if state.done and all(s is not state for s in done):
        done.append(state)
    return done


def _finish(c: _RunContext, state: _FileState) -> None:
    """The across-window stage of a file whose windows are all encoded, then its outputs, written
    on the writer thread (a few files at most wait for it), which also finds its tempo from its
    mel frames and then removes them."""
    decoded = state.decoded
    try:
        start = time.perf_counter()
        parts = c.runner.parts_of(np.stack([state.features[i] for i in range(state.n_windows)]))
        if c.runner is not c.tagger:   # one network of the tagger's: the others' analyses are stored
            parts = {**_stored_parts(c, decoded.path, c.tagger.part_fingerprints), **parts}
        scores, embeddings = c.tagger.assemble(parts)
        taggram = c.tagger.taggram(shown_path(decoded.path), decoded.duration, decoded.n_frames, scores,
                                   decoded.envelope)
        c.result.stage_seconds["model"] += time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - one file's failure must not stop the others
        remove(decoded.frames_path)
        _fail(c, decoded.path, problem_of(e))
        return
    source = {"path": os.path.abspath(decoded.path), **decoded.stamp}
    _queue_write(c, _write_file_outputs, decoded.path, taggram, embeddings, source, decoded.warnings,
                 decoded.duration, decoded.frames_path, parts=kept_parts(c.tagger, parts))


def _warm_up_writer(tagger) -> None:
    """Load what the writer thread needs on first use (the tempo's scipy and librosa modules,
    matplotlib): seconds that would otherwise hold up the first file's outputs."""
    from jaxtag.tagging import plots
    f = tagger.frontend
    frames = np.ones((2 * f.window_frames, f.n_mels), np.float32)
    tagger.tempo(frames)
    plots._pyplot()


def _queue_write(c: _RunContext, function, *args, **kwargs) -> None:
    _wait_for_writes(c, at_most=MAX_QUEUED_WRITES - 1)
    c.writes.append(c.writer.submit(function, c, *args, **kwargs))


def _wait_for_writes(c: _RunContext, at_most: int = 0) -> None:
    """Wait until at most `at_most` files wait for the writer thread (a write reports its own
    failures; result() re-raises only a bug)."""
    while len(c.writes) > at_most:
        c.writes.popleft().result()


def _derive_outputs(c: _RunContext, path: str) -> None:
    """A file whose stored scores are this model's for its audio: its outputs derived again with
    this run's policy (no decoding, no model)."""
    def build():
        stored, source, taggram = stored_taggram(c.tagger, c.options.output_dir, c.state, c.contents[path], path)
        return taggram, stored["embeddings"], source, stored["warnings"], {}
    _outputs_from_store(c, path, build)


def _outputs_from_store(c: _RunContext, path: str, build) -> None:
    """A file's outputs written from what build() makes of its stored analyses: (taggram,
    embeddings, source, warnings, more arguments of _write_file_outputs); an analysis that cannot
    be read is redone by the model, any other failure reported (the other files go on)."""
    try:
        taggram, embeddings, source, warnings, more = build()
    except UnreadableAnalysis as e:
        _redo(c, path, e)
        return
    except Exception as e:  # noqa: BLE001 - one file's failure must not stop the others
        _fail(c, path, problem_of(e))
        return
    _write_file_outputs(c, path, taggram, embeddings, source, warnings, None, **more)


def _redo(c: _RunContext, path: str, problem: Exception) -> None:
    """A file whose stored analysis cannot be read (damaged, truncated, removed): forgotten, and
    run through the model in this run (its audio is still there), with a warning naming it."""
    c.log.warn(path, f"{problem_of(problem)}: analysing it again")
    forget_unreadable(c.state, c.options.output_dir, c.contents[path])
    c.redo.append(path)


def forget_unreadable(state, output_dir: str, content: str) -> None:
    """The analyses of some audio whose arrays are missing, truncated or cannot be read: forgotten
    (its files are analysed again)."""
    for analysis in state.analyses_of(content):
        if not usable(output_dir, analysis) or read_arrays(output_dir, analysis.arrays) is None:
            state.remove_analysis(analysis.content, analysis.model)


def _stored_analyses(c: _RunContext, path: str) -> tuple[dict, dict]:
    """(the stored arrays of one of the analyses of a file's audio, {network fingerprint: {"name",
    "scores", "embeddings"}} of all of them: every network's analysis the library keeps of it)."""
    found, first = {}, None
    for analysis in c.state.analyses_of(c.contents[path]):
        stored = read_arrays(c.options.output_dir, analysis.arrays) if usable(c.options.output_dir, analysis) else None
        if stored is not None:
            first = first or stored
            found.update({fp: a for fp, a in analyses(stored).items() if fp not in found or a["name"]})
    if first is None:
        raise UnreadableAnalysis(path, "its stored analyses cannot be read")
    return first, found


def _stored_parts(c: _RunContext, path: str, fingerprints) -> dict:
    """The analyses of a file's audio by these networks (those the library keeps)."""
    _, found = _stored_analyses(c, path)
    return {fp: (found[fp]["scores"], found[fp]["embeddings"]) for fp in fingerprints if fp in found}


def _assemble_outputs(c: _RunContext, path: str) -> None:
    """A file whose store holds the analyses of all the tagger's networks (another model made of
    them tagged it): its output assembled from them, stored, and its outputs derived (no decoding,
    no model); the analyses kept for the next switch."""
    def build():
        first, found = _stored_analyses(c, path)
        stored, source, taggram = stored_taggram(c.tagger, c.options.output_dir, c.state, c.contents[path], path,
                                                 scores=False, model=first["model"])
        parts = {fp: (found[fp]["scores"], found[fp]["embeddings"]) for fp in c.tagger.part_fingerprints}
        scores, embeddings = c.tagger.assemble(parts)
        if len(scores) != len(taggram.start):
            raise DataError(path, "its stored analyses do not fit its windows (rerun with --force)")
        carried = {fp: p for fp, p in found.items() if p["name"]}
        return (dataclasses.replace(taggram, scores=scores, embeddings=embeddings), embeddings, source,
                stored["warnings"], {"parts": kept_parts(c.tagger, parts, carried), "store": True})
    _outputs_from_store(c, path, build)


def _write_file_outputs(c: _RunContext, path: str, taggram, embeddings, source: dict, warnings: list[str],
                        audio_seconds: float | None, frames_path: str | None = None, parts: dict | None = None,
                        store: bool = False) -> None:
    """Every output of a file, its record removed first and written last; its scores and tempo
    stored first when they are new (audio_seconds: how much audio the model took, frames_path its
    mel frames, removed here; None: derived again; store: stored even so: assembled from stored
    analyses), with its networks' analyses `parts` (store.write_store)."""
    name, options = c.names[path], c.options
    try:
        start = time.perf_counter()
        if frames_path is not None:
            try:
                n_mels = c.tagger.frontend.n_mels
                taggram = dataclasses.replace(taggram, tempo=c.tagger.tempo(
                    read_frames=lambda first, count: decoding.read_frames(frames_path, n_mels, first, count),
                    n_frames=os.path.getsize(frames_path) // (4 * n_mels)))
            finally:
                remove(frames_path)
        row, _ = write_file(options, name, path, taggram, embeddings, source, warnings, c.settings,
                            new_scores=audio_seconds is not None or store, tagger=c.tagger, state=c.state,
                            parts=parts)
        c.result.stage_seconds["writing"] += time.perf_counter() - start
        if path in c.moved:
            follow_move(c.state, options, c.moved[path], path, name, c.result, c.log)
    except Exception as e:  # noqa: BLE001 - one file's failure must not stop the others
        _fail(c, path, problem_of(e))
        return
    c.rows[path] = row
    if audio_seconds is None:
        c.result.derived.append(path)
    else:
        c.result.tagged.append(path)
        c.result.audio_seconds += audio_seconds
    c.log.tagged(path, taggram)
    if options.write_tags:
        _write_file_tags(c, path)


def follow_move(state, options: LibraryOptions, old: dict, path: str, name: str, result, log) -> None:
    """A file recognised as audio the library knows under another path (`old`, its record; `name`,
    the file's output name): where that path is gone, the file was moved or renamed: the old
    outputs and row go (its new ones are written); where it is still there, this is a copy and
    both stay."""
    if os.path.exists(old["source"]["path"]):
        return
    if old["name"] != name:
        remove_outputs(options.output_dir, old)
    state.remove_files([old["source"]["path"]])
    result.moved[path] = old["source"]["path"]
    log.moved(old["source"]["path"], path)


def _write_file_tags(c: _RunContext, path: str) -> None:
    """The track's tags into the file's metadata (or, with dry_run, what would be written); the
    record then holds the file's new size and mtime. A format jaxtag cannot write tags into is a
    warning, not a failure."""
    from jaxtag.data.tags import short_tag
    from jaxtag.library import file_tags as metadata
    row = c.rows[path]
    if os.path.splitext(path)[1].lower() not in metadata.SUPPORTED_EXTENSIONS:
        c.log.warn(path, f"tags not written: jaxtag cannot write tags into {os.path.splitext(path)[1]} files")
        return
    try:
        plan = metadata.write_tags(path, row["moods"], [short_tag(t) for t in row["track_tags"]],
                                   c.tagger.model_name, dry_run=c.options.dry_run,
                                   bpm=row.get("bpm") if row.get("bpm_stable") else None)
        if c.options.dry_run:
            c.log.say(metadata.describe_plan(path, plan))
            return
        st = os.stat(path)
        c.state.restamp(os.path.abspath(path), st.st_size, st.st_mtime_ns)  # the audio is the same
    except (DataError, ValueError, OSError) as e:
        # The file is tagged (its outputs are written); only its own tags are not: counted apart.
        c.result.tags_not_written[path] = problem_of(e)
        c.log.failed(path, f"tags not written: {problem_of(e)}", done=False)


def _fresh_tmp_dir(output_dir: str) -> str:
    """A temporary folder for this run's mel frames, once what killed runs left is removed
    (remove_leftovers)."""
    remove_leftovers(output_dir)
    path = os.path.join(output_dir, f"{TMP_MARK}{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    return path


def remove_leftovers(output_dir: str) -> None:
    """What killed runs left in OUT (their folders, and half-written outputs and stored arrays
    under temporary names, in any subfolder): removed."""
    for folder, dirs, files in os.walk(output_dir):
        for entry in [*dirs, *files]:
            if left_by_dead_process(entry):
                path = os.path.join(folder, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
        dirs[:] = [d for d in dirs if not left_by_dead_process(d)]
