"""What `python -m jaxtag.tag` writes for each input: NAME.json, NAME.csv (CAL500exp layout),
NAME.png and NAME.html, under an output folder.

NAME is the input's file name made safe (`some.mp3` -> `some`); inputs whose safe names clash
(`a/song.mp3`, `b/song.mp3`, `song.wav`) get a hash of their full path added, so no two inputs
share outputs and none can leave the output folder. Every file is written atomically.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import re

from jaxtag.data.audio import AUDIO_EXTENSIONS
from jaxtag.errors import DataError

FORMATS = ("json", "csv", "png", "html")


def find_audio(inputs: list[str]) -> list[str]:
    """Files given directly, plus audio files under given directories (sorted, recursive)."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            found += sorted(os.path.join(root, f) for root, _, files in os.walk(item) for f in files
                            if os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS)
        else:
            found.append(item)
    return found


def _safe_stem(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip(".")[:80] or "audio"


def output_name(path: str) -> str:
    """A file name for an input whose safe name clashes with another's: safe characters only, no
    leading dot, plus a hash of the full path."""
    digest = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{_safe_stem(path)}-{digest}"


def output_names(paths: list[str]) -> dict[str, str]:
    """Output names for a run's inputs: the safe file name where it is unique among them
    (case-insensitively, for case-insensitive disks), `output_name` where it is not."""
    stems = [_safe_stem(p) for p in paths]
    uses = collections.Counter(stem.lower() for stem in stems)
    return {p: stem if uses[stem.lower()] == 1 else output_name(p) for p, stem in zip(paths, stems)}


TMP_MARK = ".jaxtag-tmp-"


def temporary_name(path: str) -> str:
    """A hidden name beside `path` for writing it before the atomic rename; it carries this
    process's id, so a later run can remove what a killed run left (see library._remove_stale)."""
    folder, base = os.path.split(path)
    return os.path.join(folder, f".{base}{TMP_MARK}{os.getpid()}")


def write_atomic(path: str, data) -> None:
    """Write `path` so that it is either absent, its old content or complete: into a temporary
    file beside it, then renamed. data: str, bytes, or a function writing to a binary file."""
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_outputs(taggram, audio_path: str, output_dir: str, formats, name: str | None = None,
                  extra: dict | None = None) -> dict[str, str]:
    """Write the formats asked for (json, csv, png, html) of one tagged file, each atomically, the
    JSON last (with `extra` in it): a complete JSON means the file's outputs are complete."""
    from jaxtag.tagging import plots
    from jaxtag.tagging.html_page import render_html
    base = os.path.join(output_dir, name or output_name(audio_path))
    if not os.path.realpath(base).startswith(os.path.realpath(output_dir) + os.sep):
        raise DataError(audio_path, f"its output name {base!r} would leave --output_dir")
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; known: {list(FORMATS)}")
    written = {}
    for fmt in sorted(formats, key=lambda f: f == "json"):
        path = f"{base}.{fmt}"
        if fmt == "json":
            write_atomic(path, json.dumps({**taggram.to_dict(), **(extra or {})}, indent=1))
        elif fmt == "csv":
            write_atomic(path, taggram.to_csv())
        elif fmt == "html":
            write_atomic(path, render_html(taggram, audio_path, page_dir=output_dir))
        else:  # png: matplotlib names the format from the extension
            write_atomic(path, lambda f: plots.plot_taggram(taggram, f))
        written[fmt] = path
    return written
