"""python -m jaxtag.tag --workdir=RUN FILE_OR_DIR [...] --output_dir=OUT

Tags audio files (mp3, ogg, flac, wav; directories are walked recursively) with a trained run and
writes, for each input, NAME.json, NAME.csv (CAL500exp layout), NAME.png and NAME.html under OUT.
NAME is the input's file name made safe (`some.mp3` -> `some`); inputs whose safe names clash
(`a/song.mp3`, `b/song.mp3`, `song.wav`) get a hash of their full path added, so no two inputs
share outputs and none can leave OUT. A bad file is reported on stderr and skipped; the exit
status is 1 if any file failed, 2 if nothing could be tagged at all (e.g. no checkpoint).
"""
from __future__ import annotations

import collections
import hashlib
import os
import re
import sys

from absl import app, flags

from jaxtag.data.audio import AUDIO_EXTENSIONS

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (with checkpoints/).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "tagged", "Where the outputs go.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
_SMOOTH = flags.DEFINE_integer("smooth", 1, "Median filter width over windows (odd; 1 = none).")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Tag threshold; default: the run's own.")
_TOP_N = flags.DEFINE_integer("top_n", 3, "Print this many top tags per file (0: none).")
_FORMATS = flags.DEFINE_list("formats", ["json", "csv", "png", "html"], "Which outputs to write.")


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


def _write_atomic(path: str, data: str | bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_outputs(taggram, audio_path: str, output_dir: str, formats, name: str | None = None) -> dict[str, str]:
    from jaxtag import plots
    from jaxtag.errors import DataError
    from jaxtag.html_page import render_html
    base = os.path.join(output_dir, name or output_name(audio_path))
    if not os.path.realpath(base).startswith(os.path.realpath(output_dir) + os.sep):
        raise DataError(audio_path, f"its output name {base!r} would leave --output_dir")
    written = {}
    for fmt in formats:
        path = f"{base}.{fmt}"
        if fmt == "json":
            _write_atomic(path, taggram.to_json())
        elif fmt == "csv":
            _write_atomic(path, taggram.to_csv())
        elif fmt == "html":
            _write_atomic(path, render_html(taggram, audio_path))
        elif fmt == "png":
            tmp = f"{base}.tmp{os.getpid()}.png"
            plots.plot_taggram(taggram, tmp)
            os.replace(tmp, path)
        else:
            raise ValueError(f"unknown output format {fmt!r}")
        written[fmt] = path
    return written


def main(argv):
    inputs = argv[1:]
    if not inputs:
        raise app.UsageError("give one or more audio files or directories")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if _SMOOTH.value < 1 or _SMOOTH.value % 2 == 0:
        raise app.UsageError(f"--smooth must be an odd number of windows >= 1, got {_SMOOTH.value}")
    import numpy as np
    from tqdm import tqdm
    from jaxtag.errors import JaxtagError
    from jaxtag.tagger import Tagger
    try:
        tagger = Tagger.from_workdir(_WORKDIR.value, _CHECKPOINT.value)
    except JaxtagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if _THRESHOLD.value is not None:
        tagger.threshold = np.full(len(tagger.tags), _THRESHOLD.value, np.float32)
    files = find_audio(inputs)
    names = output_names(files)
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    failed = 0
    for path in tqdm(files, desc="tagging", unit="file", file=sys.stderr, disable=len(files) < 2):
        try:
            taggram = tagger.tag(path).smoothed(_SMOOTH.value)
            written = write_outputs(taggram, path, _OUTPUT_DIR.value, _FORMATS.value, names[path])
        except Exception as e:  # noqa: BLE001 - one file's failure must not stop the other files
            failed += 1
            # Expected failures read as themselves; anything else also names its type.
            problem = e if isinstance(e, (JaxtagError, OSError)) else f"{type(e).__name__}: {e}"
            print(f"error: {path}: {problem}", file=sys.stderr)
            continue
        if _TOP_N.value > 0:
            top = ", ".join(f"{t} {s:.2f}" for t, s in taggram.top_tags(_TOP_N.value))
            print(f"{path}: {top}")
        print(f"{path} -> {', '.join(written.values())}", file=sys.stderr)
    print(f"tagged {len(files) - failed} of {len(files)} file(s) into {_OUTPUT_DIR.value}", file=sys.stderr)
    return 1 if failed else 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
