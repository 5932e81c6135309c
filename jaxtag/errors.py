"""Errors that name the file and the problem, so users can fix their data."""
from __future__ import annotations

import os


class JaxtagError(Exception):
    """Base class of jaxtag's user-facing errors."""


class DataError(JaxtagError, ValueError):
    """A file of the user's data is missing, unreadable or malformed."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigError(JaxtagError, ValueError):
    """A configuration value is impossible; raised before any work is done."""


class CheckpointError(JaxtagError):
    """A workdir has no usable checkpoint."""


class WorkerStartError(JaxtagError, RuntimeError):
    """The decoding worker processes could not start (no file was at fault)."""


def problem_of(error: BaseException) -> str:
    """A failure in words, for a report that names the file already: a DataError's problem, an
    OSError's reason, any other error with its type."""
    if isinstance(error, DataError):
        return error.problem
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, JaxtagError):
        return str(error)
    return f"{type(error).__name__}: {error}"
