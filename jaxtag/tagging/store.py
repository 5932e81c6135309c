"""The library's store in an output folder (OUT/.jaxtag): each tagged file's record and its stored
model output.

- records/NAME.json: written last, after every output of the file: the model's fingerprint and the
  decision policy's key ("settings"), the file's stamp ("source": path, size, mtime_ns and content
  fingerprint), the outputs written, warnings, and its library row ("summary").
- scores/NAME.npz: the model's output for the file, written before its other outputs: window
  times, scores, embeddings (the penultimate layer), tempo, the waveform's envelope, and the
  model's fingerprint and the file's stamp; everything else is derived from it. A combined model's
  store (jaxtag.tagging.tagger.CombinedTagger) also keeps each of its networks' own analysis
  ("parts": scores and embeddings by network fingerprint), so another model made of the same
  networks, or one of them alone, is assembled from them without running them again.

NAME mirrors the file's folders below the library's root ("Artist/Album/track").
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxtag.files import TMP_MARK, write_atomic
from jaxtag.tagging.tempo import Tempo

RECORDS = os.path.join(".jaxtag", "records")
STORE = os.path.join(".jaxtag", "scores")


def record_path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, RECORDS, f"{name}.json")


def store_path(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, STORE, f"{name}.npz")


def read_record(output_dir: str, name: str) -> dict | None:
    """A file's record, or None where there is none (or it cannot be read: the file is redone)."""
    try:
        with open(record_path(output_dir, name), encoding="utf-8") as f:
            record = json.load(f)
        return record if isinstance(record, dict) else None
    except (OSError, ValueError):
        return None


def _names_under(folder: str, suffix: str) -> list[str]:
    """The names ("Artist/Album/track") of the files ending in `suffix` below `folder`, but
    temporary ones."""
    found = []
    for root, _, files in os.walk(folder):
        for f in files:
            if f.endswith(suffix) and TMP_MARK not in f:
                found.append(os.path.relpath(os.path.join(root, f[:-len(suffix)]), folder).replace(os.sep, "/"))
    return sorted(found)


def scan_records(output_dir: str) -> dict[str, dict]:
    """Every readable record of an output folder, by name."""
    records = {name: read_record(output_dir, name) for name in _names_under(os.path.join(output_dir, RECORDS), ".json")}
    return {name: r for name, r in records.items() if r is not None}


def refresh_record(output_dir: str, name: str, record: dict, path: str, stamp: dict) -> dict:
    """The record of a file found to hold the same audio under a new stamp (retagged, touched or
    copied), with that stamp, written; returned."""
    record = dict(record, source={"path": os.path.abspath(path), **stamp})
    write_atomic(record_path(output_dir, name), json.dumps(record))
    return record


def recorded_names(output_dir: str, records: dict[str, dict]) -> dict[str, str]:
    """{absolute path: name} of the files earlier runs named: those with a record, and those whose
    scores were stored by a run killed before their record was written."""
    names = {}
    for name in _names_under(os.path.join(output_dir, STORE), ".npz"):
        if name not in records:
            stored = stored_header(output_dir, name)
            if stored is not None:
                names[stored["source"]["path"]] = name
    for name, record in records.items():
        path = (record.get("source") or {}).get("path")
        if isinstance(path, str):
            names[path] = name
    return names


def untouched(path: str, *sources: dict) -> bool:
    """Whether `path` still has the size and mtime of one of the stamps `sources` (the cheap check;
    a file touched, copied or retagged since may hold the same audio: its content fingerprint,
    computed in a decoding worker, says: jaxtag.tagging.decoding.check_then_decode)."""
    st = os.stat(path)
    return any((st.st_size, st.st_mtime_ns) == (s["size"], s["mtime_ns"]) for s in sources)


def read_store(output_dir: str, name: str) -> dict | None:
    """A file's stored model output (see the module docstring), or None where there is none or it
    cannot be read."""
    try:
        with np.load(store_path(output_dir, name), allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
        stored["source"] = json.loads(str(stored.pop("source_json")))
        stored["model"], stored["warnings"] = str(stored["model"]), json.loads(str(stored.pop("warnings_json")))
        stored["tempo"] = Tempo(float(stored.pop("bpm")), stored.pop("window_bpm"), float(stored.pop("bpm_agreement")))
        described = json.loads(str(stored.pop("parts_json"))) if "parts_json" in stored else []
        stored["parts"] = {p["model"]: {"name": p["name"], "scores": stored.pop(f"part{i}_scores"),
                                        "embeddings": stored.pop(f"part{i}_embeddings")} for i, p in enumerate(described)}
        return stored
    except (OSError, ValueError, KeyError, TypeError, EOFError):  # absent, partial, or another version's
        return None


def write_store(output_dir: str, name: str, taggram, embeddings: np.ndarray, model: str, source: dict,
                warnings: list[str], parts: dict | None = None) -> None:
    """parts: {network fingerprint: {"name", "scores", "embeddings"}}, the networks' own analyses
    (a combined model's; see the module docstring)."""
    tempo = taggram.tempo or Tempo(float("nan"), np.full(len(taggram.start), np.nan, np.float32), 0.0)
    parts = parts or {}
    described = [{"model": fp, "name": str(p["name"])} for fp, p in parts.items()]
    arrays = {}
    for i, p in enumerate(parts.values()):
        arrays[f"part{i}_scores"] = np.asarray(p["scores"], np.float32)
        arrays[f"part{i}_embeddings"] = np.asarray(p["embeddings"], np.float32)
    if parts:
        arrays["parts_json"] = np.array(json.dumps(described))

    def save(f):
        np.savez(f, scores=np.asarray(taggram.scores, np.float32), start=taggram.start, end=taggram.end,
                 bpm=np.float64(tempo.bpm), window_bpm=np.asarray(tempo.windows, np.float32),
                 bpm_agreement=np.float64(tempo.agreement),
                 duration=np.float64(taggram.duration), embeddings=np.asarray(embeddings, np.float32),
                 envelope=np.zeros((0, 2), np.float32) if taggram.envelope is None else taggram.envelope,
                 tags=np.array(taggram.tags), model=np.array(model), source_json=np.array(json.dumps(source)),
                 warnings_json=np.array(json.dumps(warnings)), **arrays)
    write_atomic(store_path(output_dir, name), save)


# What write_store writes and read_store needs. A store of another version (without some of them)
# is no stored output: its file runs through the model again instead of failing to be derived.
# (Records are of the store's version: library.RECORD_VERSION goes up with a change of these.)
STORE_KEYS = frozenset({"scores", "start", "end", "bpm", "window_bpm", "bpm_agreement", "duration", "embeddings",
                        "envelope", "tags", "model", "source_json", "warnings_json"})


def stored_header(output_dir: str, name: str) -> dict | None:
    """A stored file's model fingerprint, source and the fingerprints of the networks whose own
    analyses it keeps ("parts"), read without its arrays; None if there is no store of this version."""
    try:
        with np.load(store_path(output_dir, name), allow_pickle=False) as npz:
            if not STORE_KEYS <= set(npz.files):
                return None
            parts = [p["model"] for p in json.loads(str(npz["parts_json"]))] if "parts_json" in npz.files else []
            return {"model": str(npz["model"]), "source": json.loads(str(npz["source_json"])), "parts": parts}
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def analyses(stored: dict) -> dict:
    """{network fingerprint: {"name", "scores", "embeddings"}} of a stored file (read_store): its
    model's own output, and the networks' analyses it keeps."""
    out = {stored["model"]: {"name": "", "scores": stored["scores"], "embeddings": stored["embeddings"]}}
    out.update(stored.get("parts") or {})
    return out
