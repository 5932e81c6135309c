"""Tagging a whole library: `python -m jaxtag.tag DIR ... --output_dir=OUT` (tag_library).

- Worker processes decode files into mel frames ahead of the model (jaxtag.tagging.decoding);
  the model takes windows of several files together, in fixed chunks; memory is bounded for any
  file length (audio and frames stream through blocks and a temporary file).
- Every output is written atomically, NAME.json last: it records the file's size, mtime and
  sha256 and the model and settings, so a rerun skips a file whose outputs exist for the same
  content and model (--force redoes it). A run killed at any moment and rerun ends with a complete,
  valid set and redoes only what was unfinished. Ctrl-C stops cleanly (exit 130).
- One bad file never stops the others: it is reported on stderr with its problem.
- OUT/library.csv, OUT/library.json and OUT/index.html summarise every tagged file.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np

from jaxtag.errors import DataError, JaxtagError
from jaxtag.tagging import decoding, summary
from jaxtag.tagging.library_page import render_index
from jaxtag.tagging.outputs import FORMATS, TMP_MARK, output_names, write_atomic, write_outputs

RECORD_VERSION = 1


@dataclasses.dataclass
class LibraryOptions:
    output_dir: str
    formats: tuple = FORMATS
    smooth: int = 1
    workers: int = 0             # decoding processes; 0: one per CPU core
    force: bool = False          # redo files whose outputs exist
    embeddings: bool = False     # NAME.embeddings.npz: the penultimate layer per window
    write_tags: bool = False     # the track's tags into the file's own metadata
    dry_run: bool = False        # with write_tags: only say what would be written
    top_n: int = 3               # top tags printed per file


@dataclasses.dataclass
class LibraryResult:
    tagged: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)     # outputs already there
    failed: dict = dataclasses.field(default_factory=dict)      # path -> problem
    interrupted: bool = False
    stage_seconds: dict = dataclasses.field(default_factory=lambda: dict.fromkeys(
        ("decode", "features", "model", "writing"), 0.0))
    seconds: float = 0.0
    audio_seconds: float = 0.0   # of the files tagged in this run


def settings_of(tagger, options: LibraryOptions) -> dict:
    """What makes two runs' outputs of the same file the same."""
    return {"version": RECORD_VERSION, "model": tagger.fingerprint, "smooth": options.smooth}


def _record_path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, f"{name}.json")


def _wanted_outputs(output_dir: str, name: str, options: LibraryOptions) -> list[str]:
    paths = [os.path.join(output_dir, f"{name}.{fmt}") for fmt in options.formats if fmt != "json"]
    if options.embeddings:
        paths.append(os.path.join(output_dir, f"{name}.embeddings.npz"))
    return paths + [_record_path(output_dir, name)]


def finished_record(path: str, name: str, options: LibraryOptions, settings: dict) -> dict | None:
    """The record of a file whose outputs are all there for its current content and the same
    model and settings, else None."""
    try:
        with open(_record_path(options.output_dir, name), encoding="utf-8") as f:
            record = json.load(f)["library"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if record.get("settings") != settings or record.get("source", {}).get("path") != os.path.abspath(path):
        return None
    if not all(os.path.exists(p) for p in _wanted_outputs(options.output_dir, name, options)):
        return None
    st, source = os.stat(path), record["source"]
    if (st.st_size, st.st_mtime_ns) != (source.get("size"), source.get("mtime_ns")):
        # Touched or copied since: the same content is what counts.
        if decoding.file_stamp(path)["sha256"] != source.get("sha256"):
            return None
    return record


class WindowBatcher:
    """Fills fixed-size chunks of windows from several files and encodes them; a file whose
    windows are all encoded comes back from add() or flush()."""

    def __init__(self, tagger, stats: LibraryResult):
        self.tagger, self.stats = tagger, stats
        self.rows: list[tuple[dict, int]] = []   # (file state, its window index) per chunk row
        self.windows: list[np.ndarray] = []

    def add(self, state: dict, first: int, windows: np.ndarray) -> list[dict]:
        done = []
        for k, window in enumerate(windows):
            self.rows.append((state, first + k))
            self.windows.append(window)
            if len(self.rows) == self.tagger.chunk_windows:
                done += self._encode()
        return done

    def flush(self) -> list[dict]:
        return self._encode() if self.rows else []

    def _encode(self) -> list[dict]:
        start = time.perf_counter()
        features = self.tagger.encode_chunk(np.stack(self.windows))
        self.stats.stage_seconds["model"] += time.perf_counter() - start
        done = []
        for (state, index), feature in zip(self.rows, features):
            if state["features"] is None:
                state["features"] = np.zeros((state["n_windows"], len(feature)), np.float32)
            state["features"][index] = feature
            state["encoded"] += 1
            if state["encoded"] == state["n_windows"]:
                done.append(state)
        self.rows, self.windows = [], []
        return done


def _window_groups(tagger, decoded: decoding.DecodedFile):
    """(first window index, windows) of a decoded file, a chunk at a time, read from its frames file."""
    f = tagger.frontend
    starts = tagger.window_starts(decoded.n_frames)
    for g in range(0, len(starts), tagger.chunk_windows):
        group = starts[g:g + tagger.chunk_windows]
        frames = decoding.read_frames(decoded, int(group[0]), int(group[-1]) + f.window_frames - int(group[0]))
        yield g, tagger.windows(frames, group - group[0])


def tag_library(tagger, files: list[str], options: LibraryOptions, log=None) -> LibraryResult:
    """Tag every file into options.output_dir (see the module docstring); returns what happened."""
    log = log or _Log(options)
    result = LibraryResult()
    started = time.perf_counter()
    os.makedirs(options.output_dir, exist_ok=True)
    names = output_names(files)
    settings = settings_of(tagger, options)
    records, todo = {}, []
    for path in files:
        record = None if options.force else finished_record(path, names[path], options, settings)
        if record is None:
            todo.append(path)
        else:
            records[path] = record
            result.skipped.append(path)
    log.plan(len(files), len(todo))
    tmp_dir = _fresh_tmp_dir(options.output_dir)
    try:
        _run(tagger, todo, names, options, settings, tmp_dir, records, result, log)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if options.write_tags:
        for path in result.skipped:
            _write_file_tags(path, records[path], options, tagger, result, log)
    _write_library(options.output_dir, files, records, result, tagger.model_name)
    result.seconds = time.perf_counter() - started
    return result


def _run(tagger, todo, names, options, settings, tmp_dir, records, result, log) -> None:
    """Decode `todo` in worker processes (a few files ahead) and tag them as they come."""
    workers = options.workers or os.cpu_count() or 1
    batcher = WindowBatcher(tagger, result)
    frontend = dataclasses.asdict(tagger.frontend)
    context = multiprocessing.get_context("spawn")  # a forked JAX process is not safe
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=decoding.ignore_interrupts) as pool:
        queue, pending = list(todo), set()
        try:
            while queue or pending:
                while queue and len(pending) < workers + 1:  # bounded read-ahead
                    pending.add(pool.submit(decoding.decode_file, queue.pop(0), frontend, tmp_dir))
                finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    for state in _take_decoded(tagger, future.result(), batcher, result, log):
                        _finish(tagger, state, names, options, settings, records, result, log)
            for state in batcher.flush():
                _finish(tagger, state, names, options, settings, records, result, log)
        except BaseException:
            # Ctrl-C (or a bug): stop now, not after the files being decoded.
            for future in pending:
                future.cancel()
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _take_decoded(tagger, decoded, batcher: WindowBatcher, result: LibraryResult, log) -> list[dict]:
    """Feed a decoded file's windows to the batcher; the files this completes."""
    if isinstance(decoded, decoding.DecodeFailure):
        result.failed[decoded.path] = decoded.problem
        log.failed(decoded.path, decoded.problem)
        return []
    result.stage_seconds["decode"] += decoded.decode_seconds
    result.stage_seconds["features"] += decoded.feature_seconds
    for warning in decoded.warnings:
        log.warn(decoded.path, warning)
    state = {"decoded": decoded, "n_windows": len(tagger.window_starts(decoded.n_frames)), "encoded": 0,
             "features": None}
    done = []
    for first, windows in _window_groups(tagger, decoded):
        done += batcher.add(state, first, windows)
    return done


def _finish(tagger, state: dict, names, options: LibraryOptions, settings, records, result, log) -> None:
    """The across-window stage and every output of a file whose windows are all encoded."""
    decoded: decoding.DecodedFile = state["decoded"]
    path, name = decoded.path, names[decoded.path]
    try:
        start = time.perf_counter()
        scores, embeddings = tagger.decode_features(state["features"], embeddings=options.embeddings)
        taggram = tagger.taggram(path, decoded.duration, decoded.n_frames, scores, decoded.envelope)
        taggram = taggram.smoothed(options.smooth)
        result.stage_seconds["model"] += time.perf_counter() - start
        start = time.perf_counter()
        row = summary.track_summary(taggram, path, name)
        record = {"settings": settings, "source": {"path": os.path.abspath(path), **decoded.stamp},
                  "warnings": decoded.warnings, "summary": row}
        if options.embeddings:
            _write_embeddings(options.output_dir, name, taggram, embeddings)
        write_outputs(taggram, path, options.output_dir, options.formats, name, extra={"library": record})
        result.stage_seconds["writing"] += time.perf_counter() - start
    except Exception as e:  # noqa: BLE001 - one file's failure must not stop the others
        problem = e if isinstance(e, (JaxtagError, OSError)) else f"{type(e).__name__}: {e}"
        result.failed[path] = str(problem).removeprefix(f"{path}: ")
        log.failed(path, result.failed[path])
        return
    finally:
        if os.path.exists(decoded.frames_path):
            os.remove(decoded.frames_path)
    records[path] = record
    result.tagged.append(path)
    result.audio_seconds += decoded.duration
    log.tagged(path, taggram)
    if options.write_tags:
        _write_file_tags(path, record, options, tagger, result, log)


def _write_embeddings(output_dir: str, name: str, taggram, embeddings: np.ndarray) -> None:
    def save(f):
        np.savez(f, start=taggram.start, end=taggram.end, embeddings=embeddings)
    write_atomic(os.path.join(output_dir, f"{name}.embeddings.npz"), save)


def _write_file_tags(path: str, record: dict, options: LibraryOptions, tagger, result: LibraryResult, log) -> None:
    """The track's tags into the file's metadata (or, with dry_run, what would be written); the
    record then holds the file's new size and mtime, so a rerun still finds it done."""
    from jaxtag.data.tags import short_tag
    from jaxtag.tagging import metadata
    row = record["summary"]
    try:
        plan = metadata.write_tags(path, row["moods"], [short_tag(t) for t in row["track_tags"]],
                                   tagger.model_name, dry_run=options.dry_run)
    except (DataError, ValueError) as e:
        result.failed[path] = f"tags not written: {getattr(e, 'problem', e)}"
        log.failed(path, result.failed[path], done=False)
        return
    if options.dry_run:
        log.say(metadata.describe_plan(path, plan))
        return
    st = os.stat(path)
    if (st.st_size, st.st_mtime_ns) != (record["source"]["size"], record["source"]["mtime_ns"]):
        record["source"].update(decoding.file_stamp(path))
        _update_record(options.output_dir, row["name"], record)


def _update_record(output_dir: str, name: str, record: dict) -> None:
    path = _record_path(output_dir, name)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["library"] = record
    write_atomic(path, json.dumps(data, indent=1))


def _write_library(output_dir: str, files: list[str], records: dict, result: LibraryResult, model: str) -> None:
    """library.csv, library.json and index.html over every file tagged now or before."""
    rows = [records[p]["summary"] for p in files if p in records]
    tags = list(rows[0]["mean"]) if rows else []
    write_atomic(os.path.join(output_dir, "library.json"), summary.library_json(rows, result.failed))
    write_atomic(os.path.join(output_dir, "library.csv"), summary.library_csv(rows))
    write_atomic(os.path.join(output_dir, "index.html"), render_index(rows, tags, model))


def _fresh_tmp_dir(output_dir: str) -> str:
    """A temporary folder for this run's mel frames. What killed runs left (their folders, and
    half-written outputs under temporary names) is removed first."""
    for entry in os.listdir(output_dir):
        if TMP_MARK in entry:
            pid = entry.rsplit(TMP_MARK, 1)[1]
            if not (pid.isdigit() and _alive(int(pid))):
                path = os.path.join(output_dir, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
    path = os.path.join(output_dir, f"{TMP_MARK}{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Log:
    """What the tag command says: top tags per file on stdout; warnings, failures and progress on
    stderr."""

    def __init__(self, options: LibraryOptions):
        self.options = options
        self.bar = None

    def plan(self, total: int, todo: int) -> None:
        if total > todo:
            self.say(f"{total - todo} of {total} file(s) already tagged with this model and settings "
                     "(--force redoes them)")
        if todo >= 2:
            from tqdm import tqdm
            self.bar = tqdm(total=todo, desc="tagging", unit="file", file=sys.stderr)

    def tagged(self, path: str, taggram) -> None:
        if self.options.top_n > 0:
            top = ", ".join(f"{t} {s:.2f}" for t, s in taggram.top_tags(self.options.top_n))
            self._print(f"{path}: {top}", sys.stdout)
        self._step()

    def failed(self, path: str, problem: str, done: bool = True) -> None:
        """done: the file leaves the queue here (a failure after tagging it does not)."""
        self._print(f"error: {path}: {problem}", sys.stderr)
        if done:
            self._step()

    def warn(self, path: str, message: str) -> None:
        self._print(f"warning: {path}: {message}", sys.stderr)

    def say(self, message: str) -> None:
        self._print(message, sys.stderr)

    def _print(self, message: str, stream) -> None:
        if self.bar is not None:
            self.bar.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)

    def _step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
