"""Counting XLA compilations: an epoch over tracks of any lengths should compile once per
length bucket (used by tests and scripts/benchmark.py)."""
from __future__ import annotations

import contextlib

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations():
    """Counts XLA backend compilations in the block (jax.monitoring events), as {"n": count}."""
    counter = {"n": 0}

    def listener(event, duration, **kwargs):
        del duration, kwargs
        if event == _COMPILE_EVENT:
            counter["n"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
