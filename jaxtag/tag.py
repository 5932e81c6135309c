"""python -m jaxtag.tag FILE_OR_DIR [...] --output_dir=OUT [--workdir=RUN | --model=musicnn-msd|musicnn-mtt]

Tags audio files (mp3, ogg, flac, wav; directories are walked recursively) with a pretrained model
(musicnn by default: musicnn-msd and musicnn-mtt in one vocabulary, fetched on first use) or a
trained run, and writes, for each input,
NAME.json, NAME.csv (CAL500exp layout), NAME.png and NAME.html under OUT (see
jaxtag.tagging.outputs), and OUT/library.csv, library.json and index.html over all of them.
Libraries of any size: decoding runs in worker processes, a rerun skips what is done, one bad
file never stops the others (see jaxtag.library.run). The model runs in the precision OUT's
analyses were made in, or one chosen for this CPU for a new library (--precision; one line on
stderr says which and why). Exit status: 0; 1 if any file failed; 2 if there is no model (no
checkpoint, no weights) or the precision asked for cannot run (bfloat16 for a trained model); 75
if another run holds OUT (or recorded another precision while this one started); 130 if
interrupted (rerun to finish).
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from jaxtag.tagging.outputs import FORMATS, check_formats

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run directory (with checkpoints/); without it, "
                               "the pretrained --model tags.")
_MODEL = flags.DEFINE_enum("model", "musicnn", ["musicnn-msd", "musicnn-mtt", "musicnn"],
                           "Pretrained model used when no --workdir is given: musicnn-msd (50 Last.fm tags, "
                           "moods among them), musicnn-mtt (50 MagnaTagATune tags) or musicnn (both in one "
                           "vocabulary of 73 tags, synonyms merged: docs/tagging.md; a file tagged with one of "
                           "the two before needs only the other's run).")
_HOP_SECONDS = flags.DEFINE_float("hop_seconds", None, "Pretrained models: seconds between window starts "
                                  "(default: their 3-s windows end to end).")
_PRECISION = flags.DEFINE_enum("precision", None, ["auto", "float32", "bfloat16"], "The model's numeric "
                               "precision (default: $JAXTAG_PRECISION where set, else auto). bfloat16 runs the "
                               "pretrained models' front-end in bf16: through OpenVINO on a CPU with bf16 "
                               "instructions, XLA's own on GPU/TPU and other CPUs (there at float32's speed) "
                               "(1.7-2.3x faster end to end on AMX, scores within ~0.02 of float32's, about 1.4% of "
                               "window tags flipped: docs/performance.md). auto is chosen once per library: the "
                               "precision OUT's analyses were made in (recorded by each run), or, for a new library, "
                               "bfloat16 on a CPU with AMX and float32 elsewhere; float32 or bfloat16 asked for wins "
                               "and becomes the library's. Part of the analysis' identity: a library tagged in one "
                               "precision is analysed again, not mixed, in the other.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "tagged", "Where the outputs go.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
_SMOOTH = flags.DEFINE_integer("smooth", 1, "Median filter of each tag's on/off over this many windows (odd; 1 = none).")
_THRESHOLD = flags.DEFINE_float("threshold", None, "One score threshold for every tag, and track tags on for half "
                                "the track or more; default: the model's own decisions (pretrained models: "
                                "calibrated on real music; trained runs: their validation-tuned thresholds).")
_TOP_N = flags.DEFINE_integer("top_n", 3, "Print this many top tags per file (0: none).")
_FORMATS = flags.DEFINE_list("formats", list(FORMATS), "Which outputs to write per file.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Decoding processes (0: one per CPU this process may use: its "
                                "affinity and its container's CPU quota count).")
_WAIT_FOR_LOCK = flags.DEFINE_float("wait_for_lock", 0.0, "Seconds to wait for another run into the same "
                                    "--output_dir to finish (one run at a time per output folder); 0: exit at once "
                                    "with a message naming it.")
_FORCE = flags.DEFINE_bool("force", False, "Redo files whose outputs exist for the same content and model.")
_EMBEDDINGS = flags.DEFINE_bool("embeddings", False, "Also write NAME.embeddings.npz: the model's penultimate "
                                "layer per window, with the windows' start and end times.")
_WRITE_TAGS = flags.DEFINE_bool("write_tags", False, "Write each track's tags into the file's own metadata "
                                "(MP3/WAV: ID3 TMOO and TXXX:JAXTAG; FLAC/Ogg: MOOD and JAXTAG).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "With --write_tags: print what would be written, change nothing.")
_BEAM = flags.DEFINE_string("beam_pipeline_options", None, "Tag on Apache Beam with these pipeline options "
                            "(comma-separated key=value, as tfds build takes them: runner=DirectRunner,"
                            "direct_running_mode=multi_processing,direct_num_workers=2; docs/scale-out.md). An "
                            "input may then be a text file of paths (an archive). Needs pip install -e '.[beam]'.")
_PLAYLISTS = flags.DEFINE_bool("playlists", False, "Also write OUT/playlists: an .m3u8 per tag the tracks carry and "
                               "a Navidrome smart playlist per mood (python -m jaxtag.playlists does it alone).")


def _check_flags(inputs) -> None:
    """Impossible options fail before any work."""
    if not inputs:
        raise app.UsageError("give one or more audio files or directories")
    if _WORKDIR.value and (flags.FLAGS["model"].present or _HOP_SECONDS.value is not None):
        raise app.UsageError("--model and --hop_seconds pick a pretrained model; --workdir a trained run: give one")
    if _SMOOTH.value < 1 or _SMOOTH.value % 2 == 0:
        raise app.UsageError(f"--smooth must be an odd number of windows >= 1, got {_SMOOTH.value}")
    try:
        check_formats(_FORMATS.value)
    except ValueError as e:
        raise app.UsageError(f"--formats: {e}") from None
    if _DRY_RUN.value and not _WRITE_TAGS.value:
        raise app.UsageError("--dry_run goes with --write_tags")
    try:
        _requested_precision()
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if _WORKERS.value < 0:
        raise app.UsageError(f"--workers must be >= 0, got {_WORKERS.value}")
    if "://" in _OUTPUT_DIR.value:
        # (Not a folder named "gs:" here.) On Beam too: the driver plans from OUT's records and
        # writes the library's summary itself.
        raise app.UsageError(f"--output_dir {_OUTPUT_DIR.value}: give a folder, not a URL; for a bucket, mount it "
                             "(gcsfuse, s3fs) on this machine and on Beam's workers and give its path "
                             "(docs/scale-out.md)")
    if _BEAM.value is not None:
        from jaxtag.beam import option_flags
        try:
            option_flags(_BEAM.value)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        if _WRITE_TAGS.value:
            raise app.UsageError("--write_tags runs on the machine that holds the files: tag on Beam, then run "
                                 "the same command without --beam_pipeline_options to write the tags")


def _requested_precision() -> str:
    """--precision, or its default: $JAXTAG_PRECISION where set, else auto (ValueError naming the
    variable for a bad value)."""
    from jaxtag.tagging.precision import default_request
    return _PRECISION.value or default_request()


def _tagger():
    """The tagger the flags name, and the precision choice it was made in (precision.Choice)."""
    from jaxtag.library.run import choose_precision
    from jaxtag.tagging.precision import ENV, engine_note
    from jaxtag.tagging.tagger import Tagger
    requested = _requested_precision()
    choice = choose_precision(os.path.expanduser(_OUTPUT_DIR.value), requested, pretrained=not _WORKDIR.value)
    asked_by = "" if _PRECISION.value or requested == "auto" else f" (${ENV})"
    print(f"precision: {choice.precision} ({choice.why}{asked_by}{engine_note(choice.precision)})", file=sys.stderr)
    if _WORKDIR.value:
        tagger = Tagger.from_workdir(_WORKDIR.value, _CHECKPOINT.value, precision=choice.precision)
    else:
        tagger = Tagger.pretrained(_MODEL.value, hop_seconds=_HOP_SECONDS.value, precision=choice.precision)
    if _THRESHOLD.value is not None:
        tagger.policy = tagger.policy.with_threshold(_THRESHOLD.value)
    tagger.policy = tagger.policy.replace(smooth=_SMOOTH.value)
    return tagger, choice


def main(argv):
    inputs = argv[1:]
    _check_flags(inputs)
    try:
        return _tag(inputs)
    except KeyboardInterrupt:  # while listing, loading the model or planning: nothing half-written
        print("interrupted: rerun the same command to tag the rest", file=sys.stderr)
        return 130


def _tag(inputs: list[str]) -> int:
    from jaxtag.errors import JaxtagError
    from jaxtag.library.run import LibraryOptions, tag_library
    from jaxtag.tagging.outputs import find_audio
    try:
        tagger, choice = _tagger()
    except (JaxtagError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = [os.path.expanduser(i) for i in inputs]
    if _BEAM.value:
        from jaxtag.library.beam import list_files
        files = list_files(paths)      # directories, or text files listing the archive's paths
    else:
        files = list(dict.fromkeys(find_audio(paths)))  # each file once
    options = LibraryOptions(output_dir=os.path.expanduser(_OUTPUT_DIR.value), formats=tuple(_FORMATS.value),
                             workers=_WORKERS.value, force=_FORCE.value,
                             embeddings=_EMBEDDINGS.value, write_tags=_WRITE_TAGS.value, dry_run=_DRY_RUN.value,
                             top_n=_TOP_N.value, embed_audio=len(files) == 1, wait_for_lock=_WAIT_FOR_LOCK.value,
                             follows_record=choice.follows_record,
                             roots=tuple(os.path.expanduser(i) for i in inputs if os.path.isdir(os.path.expanduser(i))))
    from jaxtag.library.state import LibraryBusy
    try:
        if _BEAM.value:
            from jaxtag.library.beam import tag_on_beam
            result = tag_on_beam(tagger, files, options, _BEAM.value)
        else:
            result = tag_library(tagger, files, options)
    except LibraryBusy as e:      # another run into OUT
        print(f"error: {e}", file=sys.stderr)
        return 75  # EX_TEMPFAIL: try again later
    except (JaxtagError, ValueError) as e:
        if not _BEAM.value:
            raise
        print(f"error: {e}", file=sys.stderr)   # Beam missing, OUT a URL, the pipeline failed
        return 2
    print(f"{result.summary_line(len(files))} into {options.output_dir} (index: "
          f"{os.path.join(options.output_dir, 'index.html')})", file=sys.stderr)
    if result.interrupted:
        print("interrupted: rerun the same command to tag the rest", file=sys.stderr)
        return 130
    if _PLAYLISTS.value:
        from jaxtag.library.playlists import write_playlists
        written = write_playlists(options.output_dir)
        print(f"{len(written)} playlist(s) in {os.path.join(options.output_dir, 'playlists')}", file=sys.stderr)
    return 1 if result.failed or result.tags_not_written else 0


def run():
    app.run(main)


if __name__ == "__main__":
    run()
