"""A tagged file at a glance (one row of the library summary) and the library's files:
OUT/library.csv, OUT/library.json and OUT/index.html (jaxtag.tagging.library_page).

A row: path, duration, model, the top tags by mean score, the tags on for most of the file (the
track's own tags, written into the file by --write_tags), each tag's share of the time it is on,
and each tag's strongest section (the window where it scores highest: start, end, score).
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np

from jaxtag.data.tags import is_mood, short_tag
from jaxtag.tagging.taggram import Taggram

TOP_TAGS = 5
# A tag belongs to the whole track when it is on for at least this share of the track's time.
TRACK_TAG_SHARE = 0.5


def time_on(taggram: Taggram) -> np.ndarray:
    """Each tag's share of the file's time during which it is on [C] (the time partition of
    Taggram.segments: each instant takes the window centred nearest to it)."""
    on = np.zeros(len(taggram.tags))
    for start, end, active in taggram.segments():
        on += (end - start) * np.asarray(active, bool)
    return on / max(taggram.duration, 1e-9)


def track_summary(taggram: Taggram, path: str, name: str) -> dict:
    """The library row of one tagged file (JSON-able). `name`: its outputs' base name."""
    mean = taggram.scores.mean(axis=0)
    share = time_on(taggram)
    strongest = taggram.scores.argmax(axis=0)
    order = np.argsort(-mean, kind="stable")
    track_tags = [taggram.tags[i] for i in order if share[i] >= TRACK_TAG_SHARE]
    return {
        "path": path, "name": name, "duration": round(float(taggram.duration), 3), "model": taggram.model,
        "top_tags": [[taggram.tags[i], round(float(mean[i]), 4)] for i in order[:TOP_TAGS]],
        "track_tags": track_tags,
        "moods": [short_tag(t) for t in track_tags if is_mood(t)],
        "mean": {t: round(float(m), 4) for t, m in zip(taggram.tags, mean)},
        "share": {t: round(float(s), 4) for t, s in zip(taggram.tags, share)},
        "strongest": {t: {"start": round(float(taggram.start[k]), 3), "end": round(float(taggram.end[k]), 3),
                          "score": round(float(taggram.scores[k, j]), 4)}
                      for j, (t, k) in enumerate(zip(taggram.tags, strongest))},
    }


def library_json(rows: list[dict], failed: dict[str, str]) -> str:
    tags = list(rows[0]["mean"]) if rows else []
    return json.dumps({"files": rows, "tags": tags, "failed": [{"path": p, "problem": m} for p, m in failed.items()]},
                      indent=1)


def library_csv(rows: list[dict]) -> str:
    """One row per file: path, duration, model, top tags ("tag score; ..."), track tags, then per
    tag its share of time on and its strongest section (start, end, score)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    tags = list(rows[0]["mean"]) if rows else []
    header = ["path", "duration", "model", "top_tags", "track_tags"]
    for t in tags:
        header += [f"{t} share", f"{t} strongest start", f"{t} strongest end", f"{t} strongest score"]
    writer.writerow(header)
    for r in rows:
        line = [r["path"], f"{r['duration']:.3f}", r["model"],
                "; ".join(f"{t} {s:.3f}" for t, s in r["top_tags"]), "; ".join(r["track_tags"])]
        for t in tags:
            best = r["strongest"][t]
            line += [f"{r['share'][t]:.4f}", f"{best['start']:.3f}", f"{best['end']:.3f}", f"{best['score']:.4f}"]
        writer.writerow(line)
    return out.getvalue()
