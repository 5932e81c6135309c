"""Playlists from a tagged library, for players that import them (Navidrome, Jellyfin, most others).

- `<tag>.m3u8` for every tag that tracks carry (their track tags, moods included: what
  --write_tags writes), the tracks ordered by their strength for the tag, strongest first.
- `mood <mood>.nsp`: a Navidrome smart playlist for every mood tracks carry, selecting by the
  mood field that --write_tags writes (TMOO / MOOD / ----:com.apple.iTunes:MOOD, which Navidrome
  reads into its `mood` field), so it follows the library as Navidrome scans it.
- `similar/<track>.m3u8`, on request: a radio list, the track then its most similar tracks.

Paths in .m3u8 files are relative to the playlist's folder (players resolve them so), UTF-8
(`#EXTM3U` with `#EXTINF` durations and titles). Every file is written atomically; a playlist
this module wrote before whose tag no track carries any more is removed (files of others are
never touched: the ones written are listed in `.jaxtag-playlists.json`).
"""
from __future__ import annotations

import json
import os

import numpy as np

from jaxtag.data.tags import short_tag
from jaxtag.files import write_atomic
from jaxtag.tagging.outputs import _safe_part

MANIFEST = ".jaxtag-playlists.json"
NSP_LIMIT = 500
PLAYLIST_KEYS = ("path", "duration", "track_tags", "moods", "strength")   # what playlists read of a library row


def _tracks(output_dir: str) -> list[dict]:
    """Every tagged file of the library's view (its model and decisions: library.json's) with its
    row: {"path" (the real path), "name", "row"}."""
    from jaxtag.library import summary
    from jaxtag.library.state import LibraryState
    state = LibraryState.existing(output_dir)
    if state is None:
        return []
    with state:
        records, view = state.records(summaries=PLAYLIST_KEYS), state.view()
    out = []
    for name, record in sorted(records.items()):
        if record.get("settings") is None or (view is not None and record["settings"] != view):
            continue
        try:
            out.append({"path": record["source"]["path"], "name": name,
                        "row": summary.row_from_json(record["summary"])})
        except (KeyError, TypeError):
            continue
    return out


def _entry(path: str, row: dict, folder: str, relative_dirs: dict | None = None) -> str:
    """A track's lines in a playlist in `folder`; relative_dirs: {audio folder: its path relative
    to `folder`}, filled as it goes (a library has far fewer folders than entries)."""
    if relative_dirs is None:
        relative = os.path.relpath(path, folder).replace(os.sep, "/")
    else:
        directory, base = os.path.split(path)
        if directory not in relative_dirs:
            relative_dirs[directory] = os.path.relpath(directory, folder).replace(os.sep, "/")
        relative = base if relative_dirs[directory] == "." else f"{relative_dirs[directory]}/{base}"
    title = os.path.splitext(os.path.basename(row.get("path") or path))[0].replace("\n", " ")
    return f"#EXTINF:{int(round(float(row.get('duration') or 0)))},{title}\n{relative}\n"


def m3u8(name: str, entries: list[str]) -> str:
    return "#EXTM3U\n" + f"#PLAYLIST:{name}\n" + "".join(entries)


def _write_text(path: str, text: str) -> None:
    # A path that is not valid UTF-8 keeps its own bytes (surrogate escapes): the player finds the file.
    write_atomic(path, text.encode("utf-8", "surrogateescape"))


def nsp(mood: str) -> str:
    """A Navidrome smart playlist of the tracks whose mood field holds `mood`."""
    return json.dumps({"name": f"jaxtag: {mood}", "comment": f"tracks jaxtag tagged with the mood {mood!r}",
                       "all": [{"is": {"mood": mood}}], "sort": "random", "limit": NSP_LIMIT}, indent=1) + "\n"


def write_playlists(output_dir: str, playlist_dir: str | None = None, radio: list[str] = (),
                    radio_length: int = 50) -> list[str]:
    """Write the library's playlists into playlist_dir (default OUT/playlists); `radio`: audio
    files of the library to write similar/<track>.m3u8 for. Returns the files written."""
    folder = os.path.abspath(playlist_dir or os.path.join(output_dir, "playlists"))
    os.makedirs(folder, exist_ok=True)
    tracks = _tracks(output_dir)
    by_tag: dict[str, list[tuple[float, dict]]] = {}
    moods: set[str] = set()
    tags = _tag_list(output_dir)
    for t in tracks:
        row = t["row"]
        strength = dict(zip(tags, np.asarray(row["strength"], float)))
        for tag in row["track_tags"]:
            by_tag.setdefault(tag, []).append((strength.get(tag, 0.0), t))
        moods.update(row["moods"])
    written, relative_dirs = [], {}
    for tag, members in sorted(by_tag.items()):
        members.sort(key=lambda item: (-item[0], item[1]["name"]))
        path = os.path.join(folder, f"{_safe_part(short_tag(tag))}.m3u8")
        _write_text(path, m3u8(f"jaxtag: {short_tag(tag)}",
                               [_entry(t["path"], t["row"], folder, relative_dirs) for _, t in members]))
        written.append(path)
    for mood in sorted(moods):
        path = os.path.join(folder, f"mood {_safe_part(mood)}.nsp")
        write_atomic(path, nsp(mood))
        written.append(path)
    if radio:
        written += _write_radio(output_dir, folder, tracks, radio, radio_length)
    _remove_stale(folder, written, keep_radio=not radio)
    return written


FILES_MARK = ', "files": ['   # in library.json, after its view and tags (summary.write_library_json)


def _tag_list(output_dir: str) -> list[str]:
    """library.json's tags, read from its head (the rows of every file follow them: a library of
    20,000 files has a hundred MB of them), or from the whole file where its head cannot be read."""
    try:
        with open(os.path.join(output_dir, "library.json"), encoding="utf-8") as f:
            head = ""
            while FILES_MARK not in head and len(head) < (1 << 24):
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                head += chunk
            if FILES_MARK in head:
                try:
                    return list(json.loads(head[:head.index(FILES_MARK)] + "}")["tags"])
                except (ValueError, KeyError, TypeError):
                    pass
            f.seek(0)
            return list(json.load(f)["tags"])
    except (OSError, ValueError, KeyError):
        return []


def _write_radio(output_dir: str, folder: str, tracks: list[dict], seeds: list[str], length: int) -> list[str]:
    from jaxtag.library import similarity
    index = similarity.load_index(output_dir) or similarity.update_index(output_dir)
    by_path = {t["path"]: t for t in tracks}
    radio_folder = os.path.join(folder, "similar")
    rows = {t["name"]: t["row"] for t in tracks}
    written = []
    for seed in seeds:
        seed_path = os.path.abspath(seed)
        if seed_path not in by_path or by_path[seed_path]["name"] not in index.path_of:
            raise ValueError(f"{seed}: not a tagged file of {output_dir}")
        name = by_path[seed_path]["name"]
        others = index.similar_tracks(index.tracks[index.position(name)], length - 1, exclude=name)
        entries = [_entry(seed_path, by_path[seed_path]["row"], radio_folder)]
        entries += [_entry(index.path_of[other], rows.get(other, {}), radio_folder) for other, _ in others]
        path = os.path.join(radio_folder, f"{_safe_part(os.path.basename(name))}.m3u8")
        os.makedirs(radio_folder, exist_ok=True)
        _write_text(path, m3u8(f"jaxtag radio: {os.path.basename(name)}", entries))
        written.append(path)
    return written


def _remove_stale(folder: str, written: list[str], keep_radio: bool) -> None:
    """Remove the playlists this module wrote before and not now; remember the ones written."""
    manifest = os.path.join(folder, MANIFEST)
    try:
        with open(manifest, encoding="utf-8") as f:
            before = set(json.load(f))
    except (OSError, ValueError):
        before = set()
    now = {os.path.relpath(p, folder) for p in written}
    if keep_radio:  # radio lists stay until asked for again
        now |= {p for p in before if p.startswith("similar" + os.sep) and os.path.exists(os.path.join(folder, p))}
    for stale in before - now:
        try:
            os.remove(os.path.join(folder, stale))
        except FileNotFoundError:
            pass
    write_atomic(manifest, json.dumps(sorted(now), indent=1))
