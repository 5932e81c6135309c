"""Console logging for the CLIs: jaxtag's progress at INFO, libraries' chatter only from WARNING."""
from __future__ import annotations

import logging as py_logging
import os

_QUIET = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}", f"{os.sep}jax{os.sep}",
          f"{os.sep}absl{os.sep}")


class _LibraryInfoFilter(py_logging.Filter):
    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or not any(q in record.pathname for q in _QUIET)


def setup_cli_logging() -> None:
    from absl import logging
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_LibraryInfoFilter())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_config_cli(main) -> None:
    """absl entry point of a CLI that needs --config."""
    from absl import app, flags
    flags.mark_flags_as_required(["config"])
    app.run(main)
