"""A tagged file at a glance (one row of the library summary) and the library's files:
OUT/library.csv, OUT/library.json and OUT/index.html (jaxtag.library.pages).

A row: path, duration, model, the top tags by mean score, the tags on for most of the file (the
track's own tags, written into the file by --write_tags), its sections (jaxtag.tagging.sections:
start, end, tags, moods), each tag's share of the time it is on, and each tag's strongest section
(the window where it scores highest: start, end, score).

Rows keep their per-tag values as float32 arrays in tag order (a library of 20,000 files holds
a few tens of MB of them), and the files are written row by row.
"""
from __future__ import annotations

import csv
import json
from typing import Iterable

import numpy as np

from jaxtag.data.tags import short_tag
from jaxtag.tagging.outputs import shown_path
from jaxtag.tagging.taggram import Taggram

PER_TAG = ("mean", "strength", "share", "strongest_start", "strongest_end", "strongest_score")


def track_summary(taggram: Taggram, path: str, name: str, warnings=()) -> dict:
    """The library row of one tagged file (its decisions are its taggram's policy's). `path`: the
    file as shown; `name`: its outputs' base name; `warnings`: what its decoding warned of (a
    truncated or a very short file). Moods are shown as short names (as written)."""
    d = taggram.decisions()
    strongest = taggram.scores.argmax(axis=0)
    f32 = lambda v: np.asarray(v, np.float32)
    tempo = taggram.tempo
    bpm = round(float(tempo.bpm), 1) if tempo is not None and np.isfinite(tempo.bpm) else None
    return {"path": path, "name": name, "duration": round(float(taggram.duration), 3), "model": taggram.model,
            "top_tags": [[t, round(s, 4)] for t, s in d.top_tags], "track_tags": d.track_tags,
            "moods": [short_tag(t) for t in d.moods], "warnings": list(warnings), "bpm": bpm, "bpm_stable": bool(tempo is not None and tempo.stable),
            "mean": f32(taggram.scores.mean(axis=0)), "strength": f32(d.strength), "share": f32(d.share),
            "strongest_start": f32(taggram.start[strongest]), "strongest_end": f32(taggram.end[strongest]),
            "strongest_score": f32(taggram.scores[strongest, np.arange(len(taggram.tags))]),
            "sections": [section.to_dict() for section in taggram.sections() or []]}


def row_to_json(row: dict) -> dict:
    return {k: ([round(float(x), 4) for x in v] if k in PER_TAG else v) for k, v in row.items()}


def row_from_json(data: dict) -> dict:
    return {k: (np.asarray(v, np.float32) if k in PER_TAG else v) for k, v in data.items()}


def _floats(values) -> list[float]:
    """Per-tag values as Python floats (an array's tolist: the same numbers as float() of each,
    without a NumPy scalar per value: a library's files hold millions)."""
    return values.tolist() if isinstance(values, np.ndarray) else [float(x) for x in values]


def _file_entry(row: dict, tags: list[str]) -> dict:
    """A row as library.json shows it: per-tag values keyed by tag."""
    per = lambda key: {t: round(x, 4) for t, x in zip(tags, _floats(row[key]))}
    entry = {k: row.get(k) for k in ("path", "name", "duration", "model", "top_tags", "track_tags", "moods", "bpm",
                                     "bpm_stable")}
    entry["warnings"] = row.get("warnings", [])
    entry["sections"] = row.get("sections", [])
    entry.update(mean=per("mean"), strength=per("strength"), share=per("share"), strongest={
        t: {"start": round(s, 3), "end": round(e, 3), "score": round(v, 4)}
        for t, s, e, v in zip(tags, _floats(row["strongest_start"]), _floats(row["strongest_end"]),
                              _floats(row["strongest_score"]))})
    entry["similar"] = [[name, round(float(score), 4)] for name, score in row.get("similar", [])]
    return entry


def write_library_json(f, rows: Iterable[dict], tags: list[str], failed: dict[str, str],
                       tags_not_written: dict[str, str] | None = None, view: dict | None = None) -> None:
    """library.json, a file row at a time, to a binary file: the view (its model, its decisions,
    and how many files other models tagged, left out), the rows, the files that failed, and the
    files tagged whose own tags could not be written (--write_tags)."""
    head = "".join(f"{json.dumps(k)}: {json.dumps(v)}, " for k, v in (view or {}).items())
    f.write(("{" + head + '"tags": ' + json.dumps(tags) + ', "files": [').encode())
    for i, row in enumerate(rows):
        f.write(((",\n" if i else "\n") + json.dumps(_file_entry(row, tags))).encode())
    listed = lambda problems: json.dumps([{"path": shown_path(p), "problem": m} for p, m in problems.items()], indent=1)
    f.write(("\n], \"failed\": " + listed(failed) + ", \"tags_not_written\": " + listed(tags_not_written or {})
             + "}\n").encode())


def sections_text(sections: list[dict]) -> str:
    """A file's sections in one CSV cell: "START-END s: tag, tag | ..." ("none" for no tags)."""
    return " | ".join(f"{s['start']:.1f}-{s['end']:.1f} s: {', '.join(s['tags']) or 'none'}" for s in sections)


def write_library_csv(f, rows: Iterable[dict], tags: list[str]) -> None:
    """library.csv to a binary file: path, duration, model, top tags ("tag strength; ..."), track
    tags, moods, similar tracks, warnings, sections ("START-END s: tag, tag | ..."), then per tag
    its strength, share of time on and strongest section (start, end, score)."""
    import io
    text = io.TextIOWrapper(f, encoding="utf-8", newline="")
    writer = csv.writer(text, lineterminator="\n")
    header = ["path", "duration", "model", "bpm", "bpm_stable", "top_tags", "track_tags", "moods", "similar", "warnings",
              "sections"]
    for t in tags:
        header += [f"{t} strength", f"{t} share", f"{t} strongest start", f"{t} strongest end", f"{t} strongest score"]
    writer.writerow(header)
    for r in rows:
        line = [r["path"], f"{r['duration']:.3f}", r["model"], "" if r.get("bpm") is None else f"{r['bpm']:.1f}",
                str(bool(r.get("bpm_stable"))).lower(),
                "; ".join(f"{t} {s:.3f}" for t, s in r["top_tags"]), "; ".join(r["track_tags"]),
                "; ".join(r["moods"]), "; ".join(f"{n} {s:.3f}" for n, s in r.get("similar", [])),
                " | ".join(r.get("warnings", [])), sections_text(r.get("sections", []))]
        for strength, share, start, end, score in zip(*(_floats(r[k]) for k in (
                "strength", "share", "strongest_start", "strongest_end", "strongest_score"))):
            line += [f"{strength:.4f}", f"{share:.4f}", f"{start:.3f}", f"{end:.3f}", f"{score:.4f}"]
        writer.writerow(line)
    text.flush()
    text.detach()
