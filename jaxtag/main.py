"""python -m jaxtag.main --config=configs/cnn_lstm.py [--workdir=DIR] [--mode=train|eval] [--config.x=...]

Trains (resuming from the latest checkpoint in --workdir) and evaluates the best checkpoint on the
test split. With no --config.data.root, the built-in synthetic corpus is prepared and used.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory; default runs/<config name>.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate) or only evaluate.")
# Multi-host runs (JAX's distributed runtime): see README "Training on many devices and hosts".
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-host).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 1, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", 0, "This process's id (multi-host).")
_BEAM = flags.DEFINE_string("beam_pipeline_options", None, "Prepare the data on Apache Beam with these pipeline options (comma-separated key=value, as "
    "tfds build takes them: runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=2; "
    "docs/scale-out.md). Needs the beam extra: pip install -e '.[beam]'.")
_AUTO_DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                      "Join a multi-host run detected by JAX (Cloud TPU pod slice, SLURM).")


def default_workdir(config_path: str) -> str:
    name = os.path.splitext(os.path.basename(config_path.split(":")[0]))[0]
    return os.path.join("runs", name)


def main(argv):
    from jaxtag.logs import setup_cli_logging
    setup_cli_logging()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from jaxtag.errors import JaxtagError
    from jaxtag.evaluation.evaluate import evaluate_checkpoint
    from jaxtag.training import parallel
    from jaxtag.training.loop import train_and_evaluate
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    auto=_AUTO_DISTRIBUTED.value)
    config = _CONFIG.value
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
    logging.info("workdir: %s", workdir)
    try:
        if _BEAM.value and jax_process_index() == 0:
            # Prepared here on Beam (once: later calls in this process find it prepared).
            from jaxtag.data import pipeline
            pipeline.prepare(config, _BEAM.value)
        if _MODE.value == "train":
            train_and_evaluate(config, workdir)
        else:
            evaluate_checkpoint(config, workdir, "test")
    except (JaxtagError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def jax_process_index() -> int:
    import jax
    return jax.process_index()


def run():
    from jaxtag.logs import run_config_cli
    run_config_cli(main)


if __name__ == "__main__":
    run()
