"""python -m jaxtag.prepare --config=configs/cnn_lstm.py [--config.data.root=DIR] [--beam_pipeline_options=...]

Builds the prepared dataset (mel frames and window labels) once, and prints its summary. With
--beam_pipeline_options the tracks are prepared on Apache Beam (jaxtag.beam), else in a local pool.
"""
from __future__ import annotations

import contextlib
import json
import sys
import time

from absl import flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_JSON = flags.DEFINE_bool("json", False, "Print the summary as JSON.")
_BEAM = flags.DEFINE_string("beam_pipeline_options", None, "Prepare the data on Apache Beam with these pipeline options (comma-separated key=value, as "
    "tfds build takes them: runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=2; "
    "docs/scale-out.md). Needs the beam extra: pip install -e '.[beam]'.")


def format_summary(summary: dict) -> str:
    lines = [f"Prepared dataset {summary['config']} in {summary['data_dir']}"]
    lines.append(f"{'split':<12}{'tracks':>8}{'windows':>9}{'masked':>8}{'annotated':>11}")
    for split, s in summary["splits"].items():
        lines.append(f"{split:<12}{s['tracks']:>8}{s['windows']:>9}{s['masked_windows']:>8}"
                     f"{s['annotated_fraction']:>11.3f}")
    lines.append("Label frequency over labelled windows:")
    for tag, freq in summary["label_frequency"].items():
        lines.append(f"  {tag:<40}{freq:.3f}")
    return "\n".join(lines)


def main(argv):
    from jaxtag.logs import setup_cli_logging
    setup_cli_logging()
    del argv
    from jaxtag.config_validation import validate_config
    from jaxtag.data import pipeline
    from jaxtag.errors import JaxtagError
    start = time.time()
    try:
        validate_config(_CONFIG.value)  # impossible settings fail before any audio is read
        # TFDS prints its progress on stdout: stderr keeps it, so stdout holds the summary alone.
        with contextlib.redirect_stdout(sys.stderr):
            builder = pipeline.prepare(_CONFIG.value, _BEAM.value)
    except (JaxtagError, ValueError) as e:
        logging.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = pipeline.summarize(builder)
    summary["seconds"] = round(time.time() - start, 2)
    print(json.dumps(summary, indent=1) if _JSON.value else format_summary(summary))
    return 0


def run():
    from jaxtag.logs import run_config_cli
    run_config_cli(main)


if __name__ == "__main__":
    run()
