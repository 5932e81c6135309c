"""The views of the whole library, derived from its database at the end of every run whatever
subset the run was given: library.json, library.csv, index.html and the similarity index with the
listening pages' similar lists. One model and one decision policy per view (the run's): files whose
outputs are of another model are left out, and the view says how many."""
from __future__ import annotations

import collections
import os
import time

from jaxtag.errors import problem_of
from jaxtag.files import write_atomic
from jaxtag.library import summary
from jaxtag.library.pages import write_index


def stored_taggrams(tagger, output_dir: str, files: list[str]) -> dict:
    """{path: (its stored arrays, its taggram with the tagger's policy)} of the files of `files`
    whose audio the tagger's model has analysed in this library (for scripts that read a tagged
    library's analyses)."""
    from jaxtag.library.state import LibraryState
    from jaxtag.library.write import stored_taggram
    state = LibraryState.existing(output_dir)
    if state is None:
        return {}
    found = {}
    with state:
        by_path = {r["source"]["path"]: r for r in state.records().values()}
        for path in files:
            record = by_path.get(os.path.abspath(path))
            if record is not None and state.analysis(record["source"]["content"], tagger.fingerprint) is not None:
                stored, _, taggram = stored_taggram(tagger, output_dir, state, record["source"]["content"], path)
                found[path] = (stored, taggram)
    return found


def library_rows(state, settings: dict) -> tuple[list[dict], dict[str, int]]:
    """(the rows of the library's files decided with these settings, by output name; {model name:
    how many files} of the others, left out of this view)."""
    rows, others = [], collections.Counter()
    for name, record in sorted(state.records().items()):
        if record.get("settings") is None:
            continue
        if record["settings"] == settings:
            rows.append(summary.row_from_json(record["summary"]))
        else:
            others[record["summary"].get("model") or record["settings"].get("model", "?")] += 1
    return rows, dict(others)


def update_similarity(output_dir: str, tagger, formats, rows: list[dict], rewrite_all: bool, redone: list[str],
                      stage_seconds: dict, log) -> dict:
    """The similarity index brought up to date with the library's stored analyses of the tagger's
    model, the listening pages' lists of similar tracks and moments (those of the files redone
    now, or of all where files left or moved: no list points at a file gone), and each file's most
    similar tracks (for index.html): {name: [(name, cosine), ...]}. A failure here is a warning:
    the tags are what the run is for."""
    from jaxtag.library import similarity
    if not rows:
        return {}
    try:
        start = time.perf_counter()
        index = similarity.update_index(output_dir, tagger.spec, model=tagger.fingerprint)
        if "html" in formats:
            similarity.write_similar_lists(index, None if rewrite_all else redone)
        similar = similarity.similar_tracks_of_all(index, names=[r["name"] for r in rows])
        stage_seconds["similarity"] = stage_seconds.get("similarity", 0.0) + time.perf_counter() - start
        return similar
    except Exception as e:  # noqa: BLE001 - reported; the outputs of every file are written
        log.say(f"warning: similar tracks and moments not updated: {problem_of(e)}")
        return {}


def write_library(output_dir: str, rows: list[dict], tagger, failed: dict, tags_not_written: dict,
                  similar: dict | None = None, others: dict | None = None) -> None:
    """library.csv, library.json and index.html over the library's rows of one model and policy,
    a row at a time; `similar` {name: [(name, cosine), ...]}: each file's most similar tracks;
    `others` {model name: files} left out (tagged with another model)."""
    similar = similar or {}
    done = [dict(r, similar=similar.get(r["name"], [])) for r in rows]
    tags = list(tagger.tags)
    view = {"model": tagger.model_name, "decisions": tagger.policy.origin, "other_models": others or {}}
    write_atomic(os.path.join(output_dir, "library.json"),
                 lambda f: summary.write_library_json(f, done, tags, failed, tags_not_written, view))
    write_atomic(os.path.join(output_dir, "library.csv"), lambda f: summary.write_library_csv(f, done, tags))
    write_atomic(os.path.join(output_dir, "index.html"),
                 lambda f: write_index(f, done, tags, tagger.model_name, tagger.policy.origin, others))
