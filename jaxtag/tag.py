"""python -m jaxtag.tag FILE_OR_DIR [...] --output_dir=OUT [--workdir=RUN | --model=musicnn-mtt]

Tags audio files (mp3, ogg, flac, wav; directories are walked recursively) with a pretrained model
(musicnn-msd by default, fetched on first use) or a trained run, and writes, for each input,
NAME.json, NAME.csv (CAL500exp layout), NAME.png and NAME.html under OUT (see
jaxtag.tagging.outputs). A bad file is reported on stderr and skipped; the exit status is 1
if any file failed, 2 if nothing could be tagged at all (e.g. no checkpoint).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from jaxtag.tagging.outputs import FORMATS

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run directory (with checkpoints/); without it, "
                               "the pretrained --model tags.")
_MODEL = flags.DEFINE_enum("model", "musicnn-msd", ["musicnn-msd", "musicnn-mtt"],
                           "Pretrained model used when no --workdir is given: musicnn-msd (50 Last.fm tags, "
                           "moods among them) or musicnn-mtt (50 MagnaTagATune tags).")
_HOP_SECONDS = flags.DEFINE_float("hop_seconds", None, "Pretrained models: seconds between window starts "
                                  "(default: their 3-s windows end to end).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "tagged", "Where the outputs go.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
_SMOOTH = flags.DEFINE_integer("smooth", 1, "Median filter width over windows (odd; 1 = none).")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Tag threshold; default: the run's own.")
_TOP_N = flags.DEFINE_integer("top_n", 3, "Print this many top tags per file (0: none).")
_FORMATS = flags.DEFINE_list("formats", list(FORMATS), "Which outputs to write.")


def main(argv):
    inputs = argv[1:]
    if not inputs:
        raise app.UsageError("give one or more audio files or directories")
    if _WORKDIR.value and (flags.FLAGS["model"].present or _HOP_SECONDS.value is not None):
        raise app.UsageError("--model and --hop_seconds pick a pretrained model; --workdir a trained run: give one")
    if _SMOOTH.value < 1 or _SMOOTH.value % 2 == 0:
        raise app.UsageError(f"--smooth must be an odd number of windows >= 1, got {_SMOOTH.value}")
    import numpy as np
    from tqdm import tqdm
    from jaxtag.errors import JaxtagError
    from jaxtag.tagging.outputs import find_audio, output_names, write_outputs
    from jaxtag.tagging.tagger import Tagger
    try:
        if _WORKDIR.value:
            tagger = Tagger.from_workdir(_WORKDIR.value, _CHECKPOINT.value)
        else:
            tagger = Tagger.pretrained(_MODEL.value, hop_seconds=_HOP_SECONDS.value)
    except (JaxtagError, ValueError) as e:
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
