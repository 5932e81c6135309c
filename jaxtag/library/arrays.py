"""A model's stored output for some audio (OUT/.jaxtag/analyses/, one .npz per (audio, model),
addressed by content: jaxtag.library.state.arrays_file): window times, scores, embeddings (the
penultimate layer), tempo, the waveform's envelope, the model's fingerprint, the precision it ran
in ("float32" or "bfloat16": jaxtag.tagging.precision; part of the fingerprint too, so analyses
of the two never mix) and the stamp of the file it was made from; every output of a file is
derived from it. A combined model's arrays (jaxtag.tagging.tagger.CombinedTagger) also keep each
of its networks' own analysis ("parts": scores and embeddings by network fingerprint), so another
model made of the same networks, or one of them alone, is assembled from them without running
them again.

What the library knows of them (which exist, their size, the networks they keep) is in the
library's database (jaxtag.library.state); these are only the arrays.
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxtag.files import write_atomic
from jaxtag.tagging.tempo import Tempo


def untouched(path: str, *sources: dict) -> bool:
    """Whether `path` still has the size and mtime of one of the stamps `sources` (the cheap check;
    a file touched, copied or retagged since may hold the same audio: its content fingerprint,
    computed in a decoding worker, says: jaxtag.tagging.decoding.check_then_decode)."""
    st = os.stat(path)
    return any((st.st_size, st.st_mtime_ns) == (s["size"], s["mtime_ns"]) for s in sources)


def read_arrays(output_dir: str, arrays: str) -> dict | None:
    """Stored arrays (see the module docstring; `arrays`: their file, relative to output_dir), or
    None where there are none or they cannot be read."""
    try:
        with np.load(os.path.join(output_dir, arrays), allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
        stored["source"] = json.loads(str(stored.pop("source_json")))
        stored["model"], stored["warnings"] = str(stored["model"]), json.loads(str(stored.pop("warnings_json")))
        stored["tempo"] = Tempo(float(stored.pop("bpm")), stored.pop("window_bpm"), float(stored.pop("bpm_agreement")))
        stored["precision"] = str(stored.get("precision", "float32"))   # (arrays before precisions: float32)
        described = json.loads(str(stored.pop("parts_json"))) if "parts_json" in stored else []
        stored["parts"] = {p["model"]: {"name": p["name"], "scores": stored.pop(f"part{i}_scores"),
                                        "embeddings": stored.pop(f"part{i}_embeddings")} for i, p in enumerate(described)}
        return stored
    except (OSError, ValueError, KeyError, TypeError, EOFError):  # absent, partial, or another version's
        return None


def write_arrays(output_dir: str, relative: str, taggram, embeddings: np.ndarray, model: str, source: dict,
                 warnings: list[str], parts: dict | None = None, precision: str = "float32") -> int:
    """Written atomically to output_dir/relative; returns their size in bytes. parts: {network
    fingerprint: {"name", "scores", "embeddings"}}, the networks' own analyses (a combined model's;
    see the module docstring); precision: the one the model ran in (Tagger.precision)."""
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
                 warnings_json=np.array(json.dumps(warnings)), precision=np.array(precision), **arrays)
    path = os.path.join(output_dir, relative)
    write_atomic(path, save)
    return os.path.getsize(path)


# What write_arrays writes and read_arrays needs. Arrays of another version (without some of them)
# are no stored output: their file runs through the model again instead of failing to be derived.
# (Not "precision": arrays written before it are float32 ones, and valid.)
STORE_KEYS = frozenset({"scores", "start", "end", "bpm", "window_bpm", "bpm_agreement", "duration", "embeddings",
                        "envelope", "tags", "model", "source_json", "warnings_json"})


def arrays_header(path: str) -> dict | None:
    """Stored arrays' model fingerprint, source and the fingerprints of the networks whose own
    analyses they keep ("parts"), read without the arrays; None if they are not of this version."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not STORE_KEYS <= set(npz.files):
                return None
            parts = [p["model"] for p in json.loads(str(npz["parts_json"]))] if "parts_json" in npz.files else []
            return {"model": str(npz["model"]), "source": json.loads(str(npz["source_json"])), "parts": parts}
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def arrays_precision(path: str) -> str | None:
    """The precision stored arrays were made in ("float32" for arrays from before precisions),
    read without the other arrays; None where they cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return str(npz["precision"]) if "precision" in npz.files else "float32"
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def analyses(stored: dict) -> dict:
    """{network fingerprint: {"name", "scores", "embeddings"}} of stored arrays (read_arrays): its
    model's own output, and the networks' analyses it keeps."""
    out = {stored["model"]: {"name": "", "scores": stored["scores"], "embeddings": stored["embeddings"]}}
    out.update(stored.get("parts") or {})
    return out
