"""The library's state: one SQLite database, OUT/.jaxtag/library.db (WAL), the only writer of
what the library knows. Every view (summary, pages, playlists, similarity, the beets plugin, `python
-m jaxtag.library`) reads it.

Tables (schema version SCHEMA_VERSION; older databases are migrated on open, a newer one is refused):
- meta: key/value: the schema version, the settings of the current view ("view"), the precision
  the library's analyses are made in ("precision": LibraryState.precision; a database without it
  reads as before, so it needs no new schema version).
- files: each audio file of the library by absolute path: its output name ("Artist/Album/track",
  what its outputs in OUT are called), the folder it was given under (root), and its stamp (size,
  mtime_ns, content: the fingerprint of its audio stream without tags, jaxtag.tagging.fingerprint).
- analyses: a model's output for some audio, keyed by (content, model fingerprint): the stored
  arrays' file (OUT/.jaxtag/analyses/, addressed by content and model, so the same audio never runs
  the same model twice whatever its path), its byte size (a truncated copy is seen without reading
  it), and the networks whose own analyses it keeps (a combined model's).
- decisions: a file's outputs in OUT: the model and the settings (decision policy, sections) they
  were derived with, the output files, and its library row. Written last, after every output: a
  file without one is redone.
- runs: who ran when (process id, host, model, counts), for `python -m jaxtag.library` and for
  the lock's message.
- failures (schema 2): the files a run could not tag (not decodable, ...) with the problem and the
  run, until the file is tagged or gone: `python -m jaxtag.library OUT` lists them.

One run at a time per output folder (RunLock, an flock on OUT/.jaxtag/lock). SQLite's locking,
and so WAL, does not hold on network file systems (NFS, SMB): keep OUT on a local disk, or give the
database a local folder with JAXTAG_STATE_DIR (docs/tagging.md).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
import sqlite3
import threading
import time

from jaxtag.errors import DataError, JaxtagError

SCHEMA_VERSION = 2
STATE_DIR = ".jaxtag"
DATABASE = "library.db"
ANALYSES = os.path.join(STATE_DIR, "analyses")
PRECISION = "precision"   # meta: the precision of the library's analyses (LibraryState.precision)
STATE_DIR_ENV = "JAXTAG_STATE_DIR"   # where the database lives instead of OUT/.jaxtag (OUT on a network share)

MIGRATIONS = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE files (
        path TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, root TEXT NOT NULL DEFAULT '',
        size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, content TEXT NOT NULL,
        added REAL NOT NULL, updated REAL NOT NULL);
    CREATE INDEX files_content ON files (content);
    CREATE INDEX files_stamp ON files (size, mtime_ns);
    CREATE TABLE analyses (
        content TEXT NOT NULL, model TEXT NOT NULL, model_name TEXT NOT NULL DEFAULT '',
        arrays TEXT NOT NULL, bytes INTEGER NOT NULL, networks TEXT NOT NULL DEFAULT '[]',
        duration REAL NOT NULL DEFAULT 0, created REAL NOT NULL,
        PRIMARY KEY (content, model));
    CREATE TABLE decisions (
        path TEXT PRIMARY KEY REFERENCES files (path) ON DELETE CASCADE ON UPDATE CASCADE,
        model TEXT NOT NULL, settings TEXT NOT NULL, outputs TEXT NOT NULL, row TEXT NOT NULL,
        updated REAL NOT NULL);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY, started REAL NOT NULL, ended REAL, pid INTEGER NOT NULL, host TEXT NOT NULL,
        model TEXT NOT NULL DEFAULT '', model_name TEXT NOT NULL DEFAULT '', files INTEGER NOT NULL DEFAULT 0,
        counts TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL DEFAULT 'running');
    """,
    2: """
    CREATE TABLE failures (
        path TEXT PRIMARY KEY, problem TEXT NOT NULL, run INTEGER NOT NULL REFERENCES runs (id),
        failed REAL NOT NULL);
    """,
}


def state_dir(output_dir: str) -> str:
    """Where the database of `output_dir` lives: OUT/.jaxtag, or under $JAXTAG_STATE_DIR (one
    folder per output folder) where OUT is on a network share."""
    local = os.environ.get(STATE_DIR_ENV)
    if local:
        key = os.path.abspath(output_dir).strip(os.sep).replace(os.sep, "_") or "root"
        return os.path.join(local, key)
    return os.path.join(output_dir, STATE_DIR)


def database_path(output_dir: str) -> str:
    return os.path.join(state_dir(output_dir), DATABASE)


def arrays_file(content: str, model: str) -> str:
    """The stored arrays of (audio, model), relative to OUT: addressed by content, not by path,
    in 256 folders by the digest's first byte; no ":" in the name (exFAT and SMB refuse it)."""
    kind, _, digest = content.rpartition(":")
    return os.path.join(ANALYSES, digest[:2], f"{digest}.{kind}.{model[:16]}.npz" if kind else
                        f"{digest}.{model[:16]}.npz")


@dataclasses.dataclass(frozen=True)
class Analysis:
    content: str
    model: str
    arrays: str      # relative to OUT
    bytes: int
    networks: tuple  # fingerprints of the networks whose own analyses it keeps
    model_name: str = ""
    duration: float = 0.0


def _now() -> float:
    return time.time()


_BYTES = "\x01"  # a path or name that is not UTF-8 (os.fsdecode's surrogates), stored as its bytes' hex


def _db(text: str) -> str:
    """A path or name as the database keeps it (SQLite's text is UTF-8; a file name need not be)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _BYTES + os.fsencode(text).hex()


def _py(text: str) -> str:
    return os.fsdecode(bytes.fromhex(text[1:])) if text.startswith(_BYTES) else text


class LibraryState:
    """The database of one output folder (see the module docstring). Safe to call from the run's
    threads (one connection, one lock); every write is one transaction."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = database_path(output_dir)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = threading.RLock()
        self._rows = {}   # library rows (decisions.row) parsed, by their text: a run reads them twice (plan, views)
        try:
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise DataError(self.path, f"the library's database cannot be read ({e}); restore it from a backup "
                                       "(docs/tagging.md), or move it away and tag the library again") from None

    @classmethod
    def existing(cls, output_dir: str) -> "LibraryState | None":
        """The database of an output folder tagged before, or None (nothing is created)."""
        return cls(output_dir) if os.path.exists(database_path(output_dir)) else None

    def view(self) -> dict | None:
        """The settings (model, policy) of the library's views as last written (library.json, the
        pages, the index): playlists and the beets plugin follow them."""
        value = self.meta("view")
        return None if value is None else json.loads(value)

    def precision(self) -> str | None:
        """The precision the library's analyses are made in, which library tagging's "auto"
        follows (jaxtag.tagging.precision.library_precision): recorded by its last run of a
        pretrained model (meta PRECISION, set_precision); for a library tagged before the record
        was kept, that of its current view's stored analyses (one arrays file read: "float32"
        unless it says otherwise); None where there is neither (a library not tagged yet)."""
        recorded = self.meta(PRECISION)
        if recorded is not None:
            return recorded
        view = self.view()
        if view is None:
            return None
        with self._lock:
            row = self.db.execute("SELECT arrays FROM analyses WHERE model=? LIMIT 1", (view["model"],)).fetchone()
        if row is None:
            return None
        from jaxtag.library.arrays import arrays_precision
        return arrays_precision(os.path.join(self.output_dir, row[0]))

    def set_precision(self, precision: str) -> None:
        self.set_meta(PRECISION, precision)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def transaction(self):
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- schema ---------------------------------------------------------------------------------
    def schema_version(self) -> int:
        has_meta = self.db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return 0
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        with self.transaction() as db:
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise DataError(self.path, f"the library's database is of schema version {version}, made by a newer "
                                           f"jaxtag (this one knows up to {SCHEMA_VERSION}): upgrade jaxtag")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(step),))

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- files and their decisions (a file's "record") ------------------------------------------
    _RECORD_SQL = ("SELECT f.path, f.name, f.size, f.mtime_ns, f.content, d.settings, d.outputs, d.row, f.root "
                   "FROM files f LEFT JOIN decisions d ON d.path = f.path")
    _RECORD_SQL_NO_ROW = _RECORD_SQL.replace("d.row", "NULL")

    @staticmethod
    def _record(row, parsed: dict | None = None, seen: dict | None = None) -> dict:
        """A record from a row of _RECORD_SQL; its library row taken from `parsed` {text: row}
        where it was read before, and put in `seen` (when given)."""
        path, name, size, mtime_ns, content, settings, outputs, summary, root = row
        path, name, root = _py(path), _py(name), _py(root)
        record = {"name": name, "root": root, "source": {"path": path, "size": size, "mtime_ns": mtime_ns,
                                                         "content": content}}
        if settings is not None:
            record.update(settings=json.loads(settings), outputs=json.loads(outputs))
            if summary is not None:
                row = (parsed or {}).get(summary)
                record["summary"] = json.loads(summary) if row is None else row
                if seen is not None:
                    seen[summary] = record["summary"]
        return record

    def records(self, summaries: bool | tuple = True) -> dict[str, dict]:
        """Every file of the library, by output name: {"name", "root", "source": {path, size,
        mtime_ns, content}} and, once its outputs are written, "settings", "outputs", "summary"
        (summaries=False: without "summary", the library row, which is most of a record to read; a
        tuple of keys: only those of each row, an absent one None, picked out by SQLite's JSON
        functions where it has them). A row read before by this object (unchanged since) is the
        same dict: treat it as read-only."""
        if isinstance(summaries, tuple):
            return self._records_with(summaries)
        with self._lock:
            rows = self.db.execute(self._RECORD_SQL if summaries else self._RECORD_SQL_NO_ROW).fetchall()
        if not summaries:
            return {r[1]: self._record(r) for r in rows}
        seen = {}   # the rows of this read are those kept for the next (an object used for long keeps no more)
        records = {r[1]: self._record(r, self._rows, seen) for r in rows}
        self._rows = seen
        return records

    def _records_with(self, keys: tuple) -> dict[str, dict]:
        """records() with only these keys of each row: a JSON array of their values per row, made by
        SQLite (array and object values as their text, so every number is the one stored), parsed
        here; without SQLite's JSON functions, the whole rows."""
        picked = "json_array(" + ", ".join("json_extract(d.row, ?)" for _ in keys) + ")"
        paths = tuple(f'$."{k}"' for k in keys)
        try:
            with self._lock:
                rows = self.db.execute(self._RECORD_SQL.replace("d.row", f"CASE WHEN d.row IS NULL THEN NULL "
                                                                         f"ELSE {picked} END"), paths).fetchall()
        except sqlite3.OperationalError:   # no JSON functions in this SQLite, or a value not UTF-8 (a name's bytes)
            with self._lock:
                rows = self.db.execute(self._RECORD_SQL).fetchall()
            records = {r[1]: self._record(r) for r in rows}
            for record in records.values():
                if "summary" in record:
                    record["summary"] = {k: record["summary"].get(k) for k in keys}
            return records
        records = {}
        for r in rows:
            record = records[r[1]] = self._record(r[:7] + (None,) + r[8:])
            if r[7] is not None:
                record["summary"] = dict(zip(keys, json.loads(r[7])))
        return records

    def record(self, name: str) -> dict | None:
        with self._lock:
            row = self.db.execute(self._RECORD_SQL + " WHERE f.name=?", (_db(name),)).fetchone()
        return self._record(row) if row else None

    def put_file(self, name: str, source: dict, root: str = "") -> None:
        """A file's path and stamp under its output name (a file known by another name at this
        path, or another file known by this name, is replaced)."""
        with self.transaction() as db:
            self._put_file(db, name, source, root)

    @staticmethod
    def _put_file(db, name: str, source: dict, root: str) -> None:
        now = _now()
        name, path, root = _db(name), _db(source["path"]), _db(root)
        db.execute("DELETE FROM files WHERE name=? AND path<>?", (name, path))
        db.execute("INSERT INTO files (path, name, root, size, mtime_ns, content, added, updated) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET name=excluded.name, "
                   "root=CASE WHEN excluded.root='' THEN files.root ELSE excluded.root END, "
                   "size=excluded.size, mtime_ns=excluded.mtime_ns, content=excluded.content, updated=excluded.updated",
                   (path, name, root, source["size"], source["mtime_ns"], source["content"], now, now))

    def put_decision(self, name: str, source: dict, settings: dict, outputs: list[str], summary: dict,
                     root: str = "") -> None:
        """A file's record: its stamp and its outputs' decisions, in one transaction (written last)."""
        with self.transaction() as db:
            self._put_file(db, name, source, root)
            db.execute("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                       (_db(source["path"]), settings["model"], json.dumps(settings, sort_keys=True),
                        json.dumps(outputs), json.dumps(summary), _now()))

    def forget_decision(self, name: str) -> None:
        """Before a file's outputs are redone: it has none until its decision is written again."""
        with self.transaction() as db:
            db.execute("DELETE FROM decisions WHERE path IN (SELECT path FROM files WHERE name=?)", (_db(name),))

    def restamp(self, path: str, size: int, mtime_ns: int) -> None:
        """The same audio under a new size or mtime (retagged, touched)."""
        with self.transaction() as db:
            db.execute("UPDATE files SET size=?, mtime_ns=?, updated=? WHERE path=?", (size, mtime_ns, _now(), _db(path)))

    def remove_files(self, paths: list[str]) -> None:
        """Files gone from the library (their analyses stay: see prune_analyses)."""
        with self.transaction() as db:
            db.executemany("DELETE FROM files WHERE path=?", [(_db(p),) for p in paths])

    def files_with_stamp(self, size: int, mtime_ns: int) -> list[dict]:
        with self._lock:
            rows = self.db.execute(self._RECORD_SQL + " WHERE f.size=? AND f.mtime_ns=?", (size, mtime_ns)).fetchall()
        return [self._record(r) for r in rows]

    # -- analyses -------------------------------------------------------------------------------
    def _analyses(self, where: str = "", args: tuple = ()) -> list[Analysis]:
        with self._lock:
            rows = self.db.execute("SELECT content, model, arrays, bytes, networks, model_name, duration FROM analyses "
                                   + where, args).fetchall()
        return [Analysis(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6]) for r in rows]

    def analysis(self, content: str, model: str) -> Analysis | None:
        found = self._analyses("WHERE content=? AND model=?", (content, model))
        return found[0] if found else None

    def analyses_of(self, content: str) -> list[Analysis]:
        return self._analyses("WHERE content=?", (content,))

    def analyses_by_content(self, model: str) -> dict[str, Analysis]:
        """Every analysis of one model, by content (one query for a whole library)."""
        return {a.content: a for a in self._analyses("WHERE model=?", (model,))}

    def analyses_all(self) -> list[Analysis]:
        return self._analyses("ORDER BY content, model")

    def put_analysis(self, analysis: Analysis) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO analyses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (analysis.content, analysis.model, analysis.model_name, analysis.arrays, analysis.bytes,
                        json.dumps(list(analysis.networks)), analysis.duration, _now()))

    def remove_analysis(self, content: str, model: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM analyses WHERE content=? AND model=?", (content, model))

    def orphan_analyses(self) -> list[Analysis]:
        """Analyses of audio no file of the library holds any more (moved away, deleted)."""
        return self._analyses("WHERE content NOT IN (SELECT content FROM files)")

    def remove_orphan_analyses(self, keys: list[tuple[str, str]]) -> None:
        """These (content, model) analyses gone, in one transaction, those of audio a file of the
        library holds (again) excepted."""
        with self.transaction() as db:
            db.executemany("DELETE FROM analyses WHERE content=? AND model=? "
                           "AND content NOT IN (SELECT content FROM files)", keys)

    # -- runs -----------------------------------------------------------------------------------
    def begin_run(self, model: str, model_name: str, files: int) -> int:
        with self.transaction() as db:
            cursor = db.execute("INSERT INTO runs (started, pid, host, model, model_name, files) VALUES (?, ?, ?, ?, ?, ?)",
                                (_now(), os.getpid(), socket.gethostname(), model, model_name, files))
            return cursor.lastrowid

    def end_run(self, run: int, counts: dict, status: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET ended=?, counts=?, status=? WHERE id=?", (_now(), json.dumps(counts), status, run))

    def last_run(self) -> dict | None:
        with self._lock:
            row = self.db.execute("SELECT id, started, ended, pid, host, model, model_name, files, counts, status "
                                  "FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            return None
        keys = ("id", "started", "ended", "pid", "host", "model", "model_name", "files", "counts", "status")
        run = dict(zip(keys, row))
        run["counts"] = json.loads(run["counts"])
        return run

    # -- failures -------------------------------------------------------------------------------
    def record_failures(self, run: int, failed: dict[str, str], cleared: list[str]) -> None:
        """At a run's end, in one transaction: the files it could not tag {absolute path: problem},
        and the failures of files tagged or gone since (`cleared`) forgotten."""
        now = _now()
        with self.transaction() as db:
            db.executemany("DELETE FROM failures WHERE path=?", [(_db(p),) for p in cleared])
            db.executemany("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                           [(_db(p), problem, run, now) for p, problem in failed.items()])

    def failures(self) -> dict[str, dict]:
        """{absolute path: {"problem", "run", "failed" (when)}} of the files not tagged."""
        with self._lock:
            rows = self.db.execute("SELECT path, problem, run, failed FROM failures ORDER BY path").fetchall()
        return {_py(path): {"problem": problem, "run": run, "failed": failed} for path, problem, run, failed in rows}


class LibraryBusy(JaxtagError):
    """Another run holds the output folder."""


class RunLock:
    """One run at a time per output folder: an exclusive flock on OUT/.jaxtag/lock (released by the
    kernel when its process ends, however it ends), holding who took it. On NFS (v4, or v3 with
    lockd) Linux maps flock to POSIX locks that the server keeps; on SMB it depends on the mount:
    docs/tagging.md."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(state_dir(output_dir), "lock")
        self.output_dir = output_dir
        self._file = None

    def holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8") as f:
                info = json.loads(f.read() or "{}")
            since = datetime.datetime.fromtimestamp(info["since"]).isoformat(sep=" ", timespec="seconds")
            return f"process {info['pid']} on {info['host']}, running since {since}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self, wait: float = 0.0) -> None:
        import fcntl
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    f.close()
                    raise LibraryBusy(f"{self.output_dir} is being tagged by {self.holder()}; "
                                      "wait for it to finish (or pass --wait_for_lock=SECONDS)") from None
                time.sleep(0.5)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            import fcntl
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
