"""The library at a glance, as `beet stats` shows a beets library (`python -m jaxtag.library OUT`):
its files and hours of audio, per model and per decision policy, the files moved by the last run,
missing from disk or not tagged (failures), the analyses kept of audio no file holds any more, the
precision its analyses are made in (jaxtag.tagging.precision), the last run, the database and the
current view; all read from the library's database, no audio.

A file moved out of the library's folders or deleted leaves the library at the next run over its
folder (its outputs and its row), but its audio's analyses stay: they are addressed by content, so
the same audio found again needs no model run. `--clean` (clean_orphans) removes them, under the
run lock.
"""
from __future__ import annotations

import collections
import datetime
import os
import socket

from jaxtag.errors import DataError
from jaxtag.library.state import LibraryState, RunLock, database_path

FINGERPRINT_SHOWN = 12   # characters of a model's fingerprint shown beside its name


class NoLibrary(DataError):
    """An output folder no library run has written to (no database)."""


def _existing(output_dir: str) -> LibraryState:
    state = LibraryState.existing(output_dir)
    if state is None:
        raise NoLibrary(output_dir, f"no tagged library here (no database {database_path(output_dir)}): "
                                    f"tag it first, e.g. python -m jaxtag.tag ~/Music --output_dir={output_dir}")
    return state


def library_stats(output_dir: str) -> dict:
    """The library of `output_dir` at a glance (see the module docstring); NoLibrary where there is
    none. Durations are seconds ("hours" beside them), paths absolute."""
    with _existing(output_dir) as state:
        records, analyses = state.records(), state.analyses_all()
        orphans, failures, last, view = state.orphan_analyses(), state.failures(), state.last_run(), state.view()
        schema, precision = state.schema_version(), state.precision()
    names = {a.model: a.model_name for a in analyses if a.model_name}
    audio_seconds = collections.defaultdict(float)   # content -> its longest analysis's duration
    for a in analyses:
        audio_seconds[a.content] = max(audio_seconds[a.content], a.duration)
    models, policies = collections.defaultdict(list), collections.defaultdict(list)
    seconds = {}
    for name, record in records.items():
        if "settings" in record:
            seconds[name] = float(record["summary"].get("duration") or 0.0)
            model = record["settings"]["model"]
            names.setdefault(model, record["summary"].get("model") or "")
            models[model].append(name)
            policies[(model, record["settings"].get("policy", ""))].append(name)
        else:   # its outputs not written yet: the next run derives them
            seconds[name] = audio_seconds.get(record["source"]["content"], 0.0)
    total = lambda group: _amount(len(group), sum(seconds[n] for n in group))
    orphan_audio = {a.content for a in orphans}
    return {
        "library": os.path.abspath(output_dir),
        **_amount(len(records), sum(seconds.values())),
        "pending": sum(1 for r in records.values() if "settings" not in r),
        "models": [{**_model(fp, names), **total(group)} for fp, group in sorted(models.items())],
        "policies": [{**_model(fp, names), "policy": policy, **total(group)}
                     for (fp, policy), group in sorted(policies.items())],
        "moved": (last or {}).get("counts", {}).get("moved", 0),
        "missing": sorted(r["source"]["path"] for r in records.values() if not os.path.exists(r["source"]["path"])),
        "failed": {path: f["problem"] for path, f in failures.items()},
        "orphans": {"analyses": len(orphans), "bytes": sum(_size(os.path.join(output_dir, a.arrays)) for a in orphans),
                    **_amount(len(orphan_audio), sum(audio_seconds[c] for c in orphan_audio), key="audio")},
        "last_run": _run(last, names),
        "database": {"path": os.path.abspath(database_path(output_dir)), "schema_version": schema,
                     "bytes": sum(_size(database_path(output_dir) + suffix) for suffix in ("", "-wal"))},
        "precision": precision,   # the library's: what library tagging's auto follows (None: not chosen yet)
        "view": None if view is None else {**_model(view["model"], names), "policy": view.get("policy"),
                                           "sections": view.get("sections")},
    }


def _amount(files: int, seconds: float, key: str = "files") -> dict:
    return {key: files, "seconds": seconds, "hours": seconds / 3600}


def _model(fingerprint: str, names: dict) -> dict:
    return {"model": names.get(fingerprint, ""), "fingerprint": fingerprint}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _run(run: dict | None, names: dict) -> dict | None:
    """The last run as library_stats shows it: its status "running" where its process still is,
    "stopped" where it ended without saying (killed, the machine went down)."""
    if run is None:
        return None
    status = run["status"]
    if status == "running" and run["host"] == socket.gethostname() and not _alive(run["pid"]):
        status = "stopped"
    ended = run["ended"]
    return {"id": run["id"], "started": run["started"], "ended": ended,
            "seconds": None if ended is None else ended - run["started"], "pid": run["pid"], "host": run["host"],
            **_model(run["model"], {**names, run["model"]: run["model_name"]}), "files": run["files"],
            "counts": run["counts"], "status": status}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # someone else's
        return True
    return True


def clean_orphans(output_dir: str, wait: float = 0.0) -> dict:
    """Remove the analyses of audio no file of the library holds any more (their arrays, then their
    rows: a clean stopped half-way leaves rows whose arrays are gone, which the next clean removes),
    holding the run lock (LibraryBusy while a run holds it, after `wait` seconds). Returns
    {"removed": [{"arrays" (relative to OUT), "model", "fingerprint", "bytes"}], "bytes": freed}."""
    if not os.path.exists(database_path(output_dir)):
        _existing(output_dir)   # raises NoLibrary; the lock would create OUT/.jaxtag
    lock = RunLock(output_dir)
    lock.acquire(wait)
    try:
        with _existing(output_dir) as state:
            removed = []
            for analysis in state.orphan_analyses():
                path = os.path.join(output_dir, analysis.arrays)
                size = _size(path)
                if os.path.exists(path):
                    os.remove(path)
                _remove_if_empty(os.path.dirname(path))
                removed.append({"arrays": analysis.arrays, "model": analysis.model_name,
                                "fingerprint": analysis.model, "bytes": size, "content": analysis.content})
            state.remove_orphan_analyses([(r["content"], r["fingerprint"]) for r in removed])
    finally:
        lock.release()
    return {"removed": removed, "bytes": sum(r["bytes"] for r in removed)}


def _remove_if_empty(folder: str) -> None:
    try:
        os.rmdir(folder)
    except OSError:   # not empty
        pass


# -- in words ---------------------------------------------------------------------------------------
def describe(stats: dict, verbose: bool = False) -> str:
    """library_stats in lines for people (verbose: the missing and failed files listed)."""
    db = stats["database"]
    lines = [f"Library: {stats['library']}",
             f"Files: {stats['files']}, {_duration(stats['seconds'])} of audio"
             + (f" ({stats['pending']} with outputs still to write)" if stats["pending"] else "")]
    if stats["models"]:
        lines.append("Per model:")
        lines += [f"  {_model_text(m)}: {m['files']} file(s), {_duration(m['seconds'])}" for m in stats["models"]]
        lines.append("Per decision policy:")
        lines += [f"  {_model_text(p)}, policy {p['policy']}: {p['files']} file(s), {_duration(p['seconds'])}"
                  for p in stats["policies"]]
    lines.append(f"Moved or renamed (last run): {stats['moved']}")
    lines.append(f"Missing (in the library, not on disk now): {len(stats['missing'])}")
    lines += [f"  {path}" for path in stats["missing"]] if verbose else []
    lines.append(f"Failed (not tagged): {len(stats['failed'])}")
    lines += [f"  {path}: {problem}" for path, problem in stats["failed"].items()] if verbose else []
    orphans = stats["orphans"]
    lines.append(f"Analyses of audio no file holds now: {orphans['analyses']}, {_bytes(orphans['bytes'])}"
                 + (" (--clean removes them)" if orphans["analyses"] else ""))
    lines.append("Precision (what --precision=auto follows): " + (stats["precision"] or "none yet (the next run "
                                                                                     "chooses one for its CPU)"))
    lines.append("Last run: " + _run_text(stats["last_run"]))
    lines.append(f"Database: {db['path']}, {_bytes(db['bytes'])} (schema version {db['schema_version']})")
    view = stats["view"]
    lines.append("View (library.json, index.html, playlists): " + (
        "none yet" if view is None else f"{_model_text(view)}, policy {view['policy']}, sections {view['sections']}"))
    return "\n".join(lines)


def describe_clean(cleaned: dict) -> str:
    lines = [f"removed {r['arrays']} ({r['model'] or r['fingerprint'][:FINGERPRINT_SHOWN]}, {_bytes(r['bytes'])})"
             for r in cleaned["removed"]]
    return "\n".join(lines + [f"removed {len(cleaned['removed'])} analysis(es) of audio no file holds now, "
                              f"freed {_bytes(cleaned['bytes'])}"])


def _model_text(entry: dict) -> str:
    return f"{entry['model'] or '?'} ({entry['fingerprint'][:FINGERPRINT_SHOWN]})"


def _run_text(run: dict | None) -> str:
    if run is None:
        return "none"
    when = datetime.datetime.fromtimestamp(run["started"]).isoformat(sep=" ", timespec="seconds")
    took = "" if run["seconds"] is None else f"{_duration(run['seconds'])}, "
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in run["counts"].items() if k != "audio_seconds")
    return (f"{when}, {took}{run['status']} (process {run['pid']} on {run['host']})\n"
            f"  {_model_text(run)}, {run['files']} file(s) given" + (f": {counts}" if counts else ""))


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _bytes(n: float) -> str:
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
