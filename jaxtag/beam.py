"""Apache Beam, an optional extra (pip install -e '.[beam]'): imported only when asked for.

Both heavy jobs run on it when given Beam pipeline options: preparing a corpus
(python -m jaxtag.prepare / jaxtag.main --beam_pipeline_options=...) and tagging a library or an
archive (python -m jaxtag.tag ... --beam_pipeline_options=...). The options are the comma-separated
`key=value` list that `tfds build --beam_pipeline_options` takes (Beam's PipelineOptions flags
without their dashes): "runner=DirectRunner,direct_running_mode=multi_processing,direct_num_workers=2",
or "runner=dask,dask_client_address=tcp://HOST:8786" (a Dask cluster: the dask extra, jaxtag.beam_dask).
docs/scale-out.md has the commands for Dask, Dataflow, Flink and Spark.
"""
from __future__ import annotations

import contextlib
import re

from jaxtag.errors import JaxtagError

INSTALL = "pip install -e '.[beam]' (or pip install 'apache-beam>=2.60')"


class BeamMissingError(JaxtagError, ImportError):
    """Beam was asked for and is not installed."""


class BeamPipelineError(JaxtagError, RuntimeError):
    """A Beam pipeline failed (Beam re-raises a worker's error as a RuntimeError of its own)."""


# How Beam reports a worker's exception: "jaxtag.errors.DataError: FILE: problem [while running 'STEP']".
_WORKER_ERROR = re.compile(r"(?:^|\s)jaxtag\.errors\.\w+: (.*?)(?: \[while running [^\]]*\])?\s*$")


@contextlib.contextmanager
def failures_named(job: str):
    """Inside: a pipeline's failure becomes one BeamPipelineError whose message is jaxtag's own
    error as a worker raised it (naming the file and the problem), not Beam's traceback."""
    try:
        yield
    except JaxtagError:
        raise
    except Exception as e:  # noqa: BLE001 - Beam wraps the workers' errors in its own types
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        found = next((m.group(1) for m in map(_WORKER_ERROR.search, reversed(lines)) if m), None)
        problem = found or f"{type(e).__name__}: {lines[-1] if lines else ''}"
        raise BeamPipelineError(f"{job} on Apache Beam failed: {problem}") from e


def require_beam():
    """The apache_beam module, or BeamMissingError saying what to install."""
    try:
        import apache_beam
    except ImportError:
        raise BeamMissingError(f"--beam_pipeline_options needs Apache Beam, which is not installed: {INSTALL}") from None
    return apache_beam


# Dask: jaxtag's DaskRunner (jaxtag.beam_dask), Beam's with what jaxtag's pipelines need; Beam's own
# (named by its path) runs only a pipeline's last sink, so its path means jaxtag's too.
DASK_RUNNER = "jaxtag.beam_dask.DaskRunner"
RUNNER_NAMES = {"dask": DASK_RUNNER, "daskrunner": DASK_RUNNER,
                "apache_beam.runners.dask.dask_runner.daskrunner": DASK_RUNNER}


def option_flags(spec: str) -> list[str]:
    """["--runner=DirectRunner", ...] of "runner=DirectRunner,..." (a bare key is a true flag;
    runner=dask is jaxtag's DaskRunner)."""
    flags = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item.startswith("-"):
            raise ValueError(f"beam pipeline option {item!r}: give key=value without dashes")
        key, _, value = item.partition("=")
        if key.strip() == "runner" and value.strip().lower() in RUNNER_NAMES:
            item = f"runner={RUNNER_NAMES[value.strip().lower()]}"
        flags.append(f"--{item}")
    if not flags:
        raise ValueError("--beam_pipeline_options is empty")
    return flags


def pipeline_options(spec: str):
    """Beam's PipelineOptions of a spec (see option_flags). The workers log warnings and errors
    only, unless the spec says otherwise (default_sdk_harness_log_level)."""
    require_beam()
    from apache_beam.options.pipeline_options import PipelineOptions
    flags = option_flags(spec)
    if f"--runner={DASK_RUNNER}" in flags:
        try:
            import dask.bag  # noqa: F401
            import distributed  # noqa: F401
        except ImportError:
            raise BeamMissingError("runner=dask needs Dask, which is not installed: pip install -e '.[dask]' (or pip "
                                   "install 'apache-beam[dask]')") from None
    if not any(f.startswith("--default_sdk_harness_log_level") for f in flags):
        flags.append("--default_sdk_harness_log_level=WARNING")
    return PipelineOptions(flags)
