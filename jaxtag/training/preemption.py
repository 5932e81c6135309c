"""SIGTERM (preemption): the loop saves a checkpoint after the current step and exits with 143."""
from __future__ import annotations

import signal
import threading

import jax
from absl import logging

PREEMPTED_EXIT_STATUS = 128 + signal.SIGTERM


class Preemption:
    """A context manager whose `due(step)` says whether to save and exit after `step`.

    With several processes, one host's SIGTERM must stop every host at the same step (a checkpoint
    is a collective write): JAX's preemption service (set up by jax.distributed.initialize) catches
    the signal, tells the other hosts, and names a step that all of them reach.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multi_host = jax.process_count() > 1

    def __enter__(self):
        if not self._multi_host and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def due(self, step: int) -> bool:
        """Called after every step, on every host."""
        if self._multi_host:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True
        logging.warning("SIGTERM: saving a checkpoint after the current step, then exiting")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
