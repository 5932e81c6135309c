"""What `python -m jaxtag.tag` writes for each input: NAME.json, NAME.csv (CAL500exp layout) and
NAME.sections.csv (its sections: start, end, tags, moods), NAME.png and NAME.html, under an output
folder.

NAME is the input's file name made safe (`some.mp3` -> `some`); inputs whose safe names clash
(`a/song.mp3`, `b/song.mp3`, `song.wav`) get a hash of their full path added, so no two inputs
share outputs and none can leave the output folder. Every file is written atomically.
"""
from __future__ import annotations

import collections
import hashlib
import os
import re

from jaxtag.data.audio import AUDIO_EXTENSIONS
from jaxtag.errors import DataError
from jaxtag.files import write_atomic

FORMATS = ("json", "csv", "png", "html")


def check_formats(formats) -> None:
    """ValueError unless `formats` are known and include json (a file's taggram, and its part of
    a library's summary)."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown {unknown}; known: {list(FORMATS)}")
    if "json" not in formats:
        raise ValueError("they must include json (each file's taggram, and its part of the library summary)")


def find_audio(inputs: list[str]) -> list[str]:
    """Files given directly, plus the audio files under given directories (sorted, recursive;
    hidden files and folders, such as macOS's ._song.mp3, are passed over)."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            inside = []
            for root, dirs, files in os.walk(item):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                inside += [os.path.join(root, f) for f in files
                           if not f.startswith(".") and os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS]
            found += sorted(inside)
        else:
            found.append(item)
    return found


def shown_path(path: str) -> str:
    """A path as outputs, logs and pages show it. A name that is not valid UTF-8 (an old Latin-1
    collection's `caf\xe9.ogg`: Python holds its bytes as surrogate escapes, which no UTF-8 file,
    terminal or page can hold) shows those bytes escaped as \\xNN."""
    return os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _safe_part(text: str) -> str:
    """One component of an output name: letters, digits, spaces and a few marks (others become
    "_"; so do bytes that are not UTF-8), no leading dot, no trailing dot or space (Windows and
    SMB shares refuse those), at most 80 characters."""
    safe = re.sub(r"[^\w .,()\[\]&'+-]+", "_", text).lstrip(". ")[:80].rstrip(". ")
    return safe or "audio"


def _relative_location(path: str, roots) -> list[str]:
    """The folders of `path` below the deepest of `roots` that holds it, then its stem."""
    absolute = os.path.abspath(path)
    holders = [os.path.abspath(r) for r in roots if absolute.startswith(os.path.abspath(r).rstrip(os.sep) + os.sep)]
    folder = os.path.dirname(absolute)
    below = os.path.relpath(folder, max(holders, key=len)).split(os.sep) if holders else []
    return [part for part in below if part not in ("", ".")] + [os.path.splitext(os.path.basename(path))[0]]


def plain_name(path: str, roots=()) -> str:
    """An input's output name, mirroring its folders below the root (a directory given) that holds
    it: `Artist/Album/track`; each part made safe."""
    return "/".join(_safe_part(part) for part in _relative_location(path, roots))


def output_name(path: str, roots=()) -> str:
    """An output name for an input whose plain name clashes with another's: the plain name plus
    a hash of the input's full path."""
    digest = hashlib.sha256(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{plain_name(path, roots)}-{digest}"


# The library's own files (library.json, library.csv, index.html): no track's outputs take them.
RESERVED_NAMES = ("library", "index")


def default_roots(paths: list[str]) -> tuple[str, ...]:
    """Without roots given, the outputs mirror the folders below the inputs' common folder."""
    folders = {os.path.dirname(os.path.abspath(p)) for p in paths}
    return (os.path.commonpath(sorted(folders)),) if folders else ()


def output_names(paths: list[str], roots=(), recorded: dict[str, str] | None = None) -> dict[str, str]:
    """Output names for a run's inputs (`plain_name` below `roots`, the directories given; by
    default their common folder): the plain name where it is unique among them and among the
    names earlier runs gave (case-insensitively, for case-insensitive disks) and not the library's
    own, `output_name` where not. `recorded` {absolute path: name}: the names earlier runs gave;
    those files keep them (an output folder of an earlier layout keeps its names too), so adding
    files to a library never renames the outputs of the files already tagged."""
    recorded = recorded or {}
    roots = tuple(roots) or default_roots(paths)
    names = {p: recorded[os.path.abspath(p)] for p in paths if os.path.abspath(p) in recorded}
    fresh = {p: plain_name(p, roots) for p in paths if p not in names}
    taken = {n.lower() for n in recorded.values()} | set(RESERVED_NAMES)
    uses = collections.Counter(n.lower() for n in fresh.values())
    for path, name in fresh.items():
        names[path] = name if uses[name.lower()] == 1 and name.lower() not in taken else output_name(path, roots)
    return names


def format_files(fmt: str) -> tuple[str, ...]:
    """The suffixes of the files a format writes per input (csv: the CAL500exp segments, which
    training reads as labels, and beside them the sections, in a layout of their own)."""
    return (".csv", ".sections.csv") if fmt == "csv" else (f".{fmt}",)


def write_outputs(taggram, audio_path: str, output_dir: str, formats, name: str | None = None,
                  embed_audio: bool = True, link_from: str | None = None) -> dict[str, str]:
    """Write the formats asked for (json, csv, png, html) of one tagged file, each atomically
    (csv: NAME.csv and, where the taggram's sections are known, NAME.sections.csv).
    embed_audio: the audio goes into the HTML page (up to html_page.MAX_EMBED_BYTES), else the
    page links it by its path (a library's pages), relative to the folder the page is in or, when
    it is written elsewhere first, link_from (where it will be)."""
    from jaxtag.tagging import plots
    from jaxtag.tagging.html_page import render_html
    base = os.path.join(output_dir, name or output_name(audio_path))
    if not os.path.realpath(base).startswith(os.path.realpath(output_dir) + os.sep):
        raise DataError(audio_path, f"its output name {base!r} would leave --output_dir")
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; known: {list(FORMATS)}")
    written = {}
    for fmt in formats:
        path = f"{base}.{fmt}"
        if fmt == "json":
            write_atomic(path, taggram.to_json())
        elif fmt == "csv":
            write_atomic(path, taggram.to_csv())
            found = taggram.sections_csv()
            if found is not None:
                written["sections.csv"] = f"{base}.sections.csv"
                write_atomic(written["sections.csv"], found)
        elif fmt == "html":
            write_atomic(path, render_html(taggram, audio_path, page_dir=link_from or os.path.dirname(base),
                                           embed_audio=embed_audio,
                                           similar_script=os.path.basename(base) + ".similar.js"))
        else:  # png: matplotlib names the format from the extension
            write_atomic(path, lambda f: plots.plot_taggram(taggram, f))
        written[fmt] = path
    return written
