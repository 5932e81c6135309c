"""Checkpoints with orbax: the latest few (to resume) and the best by a validation metric.

Each checkpoint holds `variables` (params, and batch statistics where the model has them),
`opt_state` (latest only) and `meta`: a JSON record of the config,
tag names, frontend settings, epoch and metrics, so a checkpoint alone is enough to tag new audio.
orbax writes to a temporary directory and renames it when complete, so a crash never leaves a
half-written checkpoint under a real step, and a finished one is never overwritten.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxtag.data.features import FrontendSettings
from jaxtag.errors import CheckpointError

LATEST, BEST = "latest", "best"


def checkpoint_meta(config, tags, epoch: int, metrics: dict | None, extra: dict) -> dict:
    """Everything needed to use a checkpoint without the config that trained it."""
    return {"epoch": epoch, "config": json.loads(config.to_json()), "tags": list(tags),
            "frontend": FrontendSettings.from_config(config.data).to_dict(),
            "model": config.model.name, "threshold": config.eval.threshold,
            "validation": json_safe(metrics) if metrics else None, **extra}


def json_safe(value):
    """value with every non-finite float (NaN, +-inf: not JSON) replaced by None, and numpy
    scalars and arrays as Python numbers and lists. Strings are never touched."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _manager(path: str, max_to_keep: int, best: bool, create: bool = True, item_handlers=None
             ) -> ocp.CheckpointManager:
    # Multi-host saves meet at barriers named after the step directory ("async_write_complete.4"):
    # the latest and best managers save the same step at once, so each needs its own key prefix or
    # the second one finds the first one's barrier "already ongoing" and times out.
    prefix = f"jaxtag_{os.path.basename(os.path.normpath(path))}_{'save' if create else 'restore'}"
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create,
        best_fn=(lambda m: m["score"]) if best else None, best_mode="max",
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix))
    return ocp.CheckpointManager(os.path.abspath(path), options=options, item_handlers=item_handlers)


class CheckpointStore:
    """The two orbax managers of a workdir: <workdir>/checkpoints/{latest,best}."""

    def __init__(self, workdir: str, keep: int = 2):
        root = os.path.join(workdir, "checkpoints")
        self.latest = _manager(os.path.join(root, LATEST), keep, best=False)
        self.best = _manager(os.path.join(root, BEST), 1, best=True)

    def save(self, step: int, variables, opt_state, meta: dict, score: float | None, is_best: bool) -> None:
        self.latest.save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave(variables), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)))
        if is_best:
            self.best.save(step, metrics={"score": float(score)}, args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)))

    def restore_latest(self, variables_target, opt_state_target) -> tuple[Any, Any, dict] | None:
        step = self.latest.latest_step()
        if step is None:
            return None
        try:
            out = self.latest.restore(step, args=ocp.args.Composite(
                variables=ocp.args.StandardRestore(variables_target),
                opt_state=ocp.args.StandardRestore(opt_state_target), meta=ocp.args.JsonRestore()))
        except ValueError:  # another tree than the model's: say so where we know why
            if self._saved_in_earlier_layout(step):
                raise CheckpointError(f"{self.latest.directory}: step {step} was saved by an earlier jaxtag (the "
                                      "paper trunk's layers under trunk/convs/): it tags and evaluates, but training "
                                      "cannot resume from it; use a new --workdir") from None
            raise
        return out["variables"], out["opt_state"], out["meta"]

    def _saved_in_earlier_layout(self, step: int) -> bool:
        mngr = _manager(str(self.latest.directory), 1, best=False, create=False,
                        item_handlers={"variables": ocp.StandardCheckpointHandler()})
        try:
            return "convs" in mngr.item_metadata(step)["variables"]["params"]["trunk"]
        except (KeyError, TypeError):
            return False
        finally:
            mngr.close()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def restore_for_inference(workdir: str, which: str = BEST) -> tuple[Any, dict]:
    """(variables, meta) of the best or latest checkpoint of a workdir, or of a given step number."""
    root = os.path.join(workdir, "checkpoints")
    kind = LATEST if which not in (BEST, LATEST) else which
    path = os.path.join(root, kind)
    if not os.path.isdir(path):
        raise CheckpointError(f"{workdir}: no checkpoint found (expected {path}); train first")
    mngr = _manager(path, 1, best=False, create=False, item_handlers={
        "variables": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()})
    try:
        steps = mngr.all_steps()
        if not steps:
            raise CheckpointError(f"{workdir}: no finished checkpoint in {path}; train first")
        if which in (BEST, LATEST):
            step = max(steps)  # the best manager keeps exactly one
        else:
            step = int(which)
            if step not in steps:
                raise CheckpointError(f"{workdir}: no checkpoint at step {step}; have {sorted(steps)}")
        # Onto this process's first device, whatever devices saved it: a checkpoint trained on a
        # pod (or two hosts) tags music on a laptop.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                              mngr.item_metadata(step)["variables"])
        out = mngr.restore(step, args=ocp.args.Composite(
            variables=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    finally:
        mngr.close()
    return upgrade_variables(out["variables"]), out["meta"]


def upgrade_variables(variables: dict) -> dict:
    """Variables saved by earlier jaxtag versions in today's layout: the paper trunk's conv layers
    were under trunk/convs/ (an nn.scan); they are now trunk/conv0, trunk/conv1, ..."""
    params = variables.get("params", {})
    trunk = params.get("trunk")
    if not isinstance(trunk, dict) or "convs" not in trunk:
        return variables
    trunk = {**{k: v for k, v in trunk.items() if k != "convs"}, **trunk["convs"]}
    return {**variables, "params": {**params, "trunk": trunk}}


def checkpoint_threshold(meta: dict, n_tags: int) -> np.ndarray:
    """The checkpoint's per-tag thresholds if it tuned them, else its single threshold, per tag."""
    tuned = meta.get("thresholds")
    return np.asarray(tuned if tuned else [meta.get("threshold", 0.5)] * n_tags, np.float64)
