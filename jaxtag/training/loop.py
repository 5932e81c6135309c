"""The training loop (paper 4.3 and 5): `train_and_evaluate(config, workdir)`.

Read top to bottom: set up the run (data, model, steps, checkpoints), restore the latest
checkpoint or initialise, then run epochs; each trains on the train split (mid-epoch checkpoints,
preemption) and ends with validation, the latest and best checkpoints and logs. Last, the best
checkpoint is evaluated on the test split.

The loop never waits on the device: per-track losses and the finite-check of a step are read one
step later, and the step count is kept on the host.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from jaxtag.config_validation import validate_config
from jaxtag.data import pipeline
from jaxtag.errors import JaxtagError
from jaxtag.evaluation import evaluate
from jaxtag.evaluation.metrics import tune_thresholds
from jaxtag.models import create_model, run_keys
from jaxtag.training import checkpoints, parallel
from jaxtag.training.preemption import PREEMPTED_EXIT_STATUS, Preemption
from jaxtag.training.steps import create_train_state, device_batch, make_predict_step, make_train_step
from jaxtag.training.summaries import SummaryWriter, summary_writer


class TrainingDivergedError(JaxtagError):
    """A non-finite loss or gradient: training stops; the bad state is never saved."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (resuming from the latest checkpoint in workdir), then evaluate the best checkpoint on
    the test split. Returns the test metrics."""
    validate_config(config)
    run = set_up_run(config, workdir)
    state, position = restore_or_initialize(run)
    try:
        with Preemption() as preemption:
            while position.epoch < config.train.num_epochs:
                state, epoch = train_one_epoch(run, state, position, preemption)
                position = end_of_epoch(run, state, position, epoch)
    finally:
        # Async checkpoint writes must finish (or fail loudly) before the process goes on or exits.
        run.store.wait()
        run.store.close()
    return evaluate.evaluate_checkpoint(config, workdir, "test")


@dataclasses.dataclass(frozen=True)
class HostShards:
    """This process's part of the train split: with several hosts, each reads its own shard and
    all agree on each step's bucket from every host's track lengths (exchanged once)."""
    index: int
    count: int
    num_tracks: int                      # tracks this host trains on per epoch
    rows: int                            # this host's rows of each step
    lengths_by_host: list | None = None  # every host's track lengths; None with one host


@dataclasses.dataclass
class Run:
    """What every epoch of a run shares."""
    config: ml_collections.ConfigDict
    workdir: str
    tags: tuple[str, ...]
    model: Any
    mesh: jax.sharding.Mesh
    hosts: HostShards
    store: checkpoints.CheckpointStore
    train_step: Callable
    predict_step: Callable
    meta_extra: dict                     # saved with every checkpoint: input statistics, thresholds
    writer: SummaryWriter | None
    epoch_seconds: list = dataclasses.field(default_factory=list)  # for the ETA


@dataclasses.dataclass(frozen=True)
class Position:
    """Where training stands: the epoch to run next, how many of its batches are done (a
    mid-epoch resume) with their track losses, and the best validation score so far."""
    epoch: int = 0
    batches_done: int = 0
    track_losses: tuple = ()
    best_score: float = -np.inf


@dataclasses.dataclass(frozen=True)
class EpochResult:
    track_losses: list
    started: float  # time.time() at the epoch's start
    seconds: float  # training time
    windows: int


def set_up_run(config, workdir: str) -> Run:
    """Prepare the data (process 0 first), build the model, its steps and the checkpoint store."""
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.train.batch_size, mesh)  # before any work
    os.makedirs(workdir, exist_ok=True)
    builder = parallel.on_each_host_in_turn(lambda: pipeline.prepare(config))
    tags = builder.builder_config.settings.tags
    hosts = _host_shards(config, builder)
    stats = None
    if config.model.normalize or config.train.pos_weight != "none":
        stats = pipeline.train_statistics(config)
    model = create_model(config.model, len(tags), input_stats=stats)
    return Run(config=config, workdir=workdir, tags=tags, model=model, mesh=mesh, hosts=hosts,
               store=checkpoints.CheckpointStore(workdir, keep=config.train.keep_checkpoints),
               train_step=make_train_step(model, config.train.loss, _pos_weight(config, stats), mesh),
               predict_step=make_predict_step(model), meta_extra={"input_stats": stats},
               writer=summary_writer(workdir))


def _host_shards(config, builder) -> HostShards:
    index, count = jax.process_index(), jax.process_count()
    rows = config.train.batch_size // count
    if count == 1:
        return HostShards(index, count, builder.info.splits["train"].num_examples, rows)
    lengths = parallel.gather_from_hosts(pipeline.host_shard_lengths(config, index, count))
    return HostShards(index, count, len(lengths[index]), rows, lengths)


def _pos_weight(config, stats):
    if config.train.loss != "bce" or config.train.pos_weight == "none":
        return None
    rate = np.clip(np.asarray(stats["positive_rate"]), 1e-3, 1 - 1e-3)
    return np.clip((1 - rate) / rate, 1.0, 20.0)  # balanced, capped for very rare tags


def restore_or_initialize(run: Run):
    """(state replicated over the mesh, Position): from the latest checkpoint, else fresh."""
    config = run.config
    state = create_train_state(config, run.model, run_keys(config.seed).init)
    position = Position()
    restored = run.store.restore_latest(state.variables, state.opt_state)
    if restored is not None:
        variables, opt_state, meta = restored
        position = _resume_position(run, meta)
        state = state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                              opt_state=opt_state, step=jnp.asarray(meta["step"], jnp.int32))
        logging.info("Resumed at epoch %d, batch %d (step %d) from %s", position.epoch + 1, position.batches_done,
                     meta["step"], run.workdir)
    if jax.process_index() == 0:
        with open(os.path.join(run.workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=1))
    return parallel.replicate(state, run.mesh), position


def _resume_position(run: Run, meta: dict) -> Position:
    best = meta["best_score"] if meta.get("best_score") is not None else -np.inf
    if meta.get("batches_done") is None:  # saved at the end of an epoch
        return Position(epoch=meta["epoch"] + 1, best_score=best)
    # Saved mid-epoch: replay the rest of that epoch, if its batches are the same as now.
    layout = {"hosts": run.hosts.count, "batch_size": run.config.train.batch_size}
    saved_layout = {k: meta.get(k, v) for k, v in layout.items()}  # older checkpoints: as now
    if saved_layout != layout:  # an epoch's batches depend on both: where it stopped means nothing here
        logging.warning("The checkpoint was saved mid-epoch with %s, this run has %s: epoch %d restarts from "
                        "its first batch", saved_layout, layout, meta["epoch"] + 1)
        return Position(epoch=meta["epoch"], best_score=best)
    return Position(epoch=meta["epoch"], batches_done=meta["batches_done"],
                    track_losses=tuple(meta["epoch_track_losses"]), best_score=best)


def train_one_epoch(run: Run, state, position: Position, preemption: Preemption):
    """Train on this host's batches of epoch position.epoch, skipping those already done.
    Returns (state, EpochResult)."""
    config, every = run.config, run.config.train.checkpoint_every_steps
    results = StepResults(position.track_losses)
    progress = EpochProgress(run, position)
    step = int(state.step)  # counted on the host: reading state.step would wait on the device
    batches = pipeline.train_batches(config, position.epoch, run.hosts.index, run.hosts.count,
                                     run.hosts.lengths_by_host)
    for i, batch in enumerate(batches):
        if i < position.batches_done:  # the same seeded order as before the interruption
            continue
        # Every `every` steps of the run, written once the next batch exists: the epoch's last
        # step gets the end-of-epoch checkpoint instead.
        if every and i > position.batches_done and step % every == 0:
            save_mid_epoch(run, state, position, i, results.collect())
        state, per_track, valid, finite = run.train_step(
            state, parallel.shard_batch(device_batch(batch), run.mesh), run_keys(config.seed).step)
        step += 1
        results.add(per_track, valid, finite, batch["track"], step)
        progress.update(batch)
        if preemption.due(step):
            save_mid_epoch(run, state, position, i + 1, results.collect())
            run.store.wait()
            logging.warning("Preempted: saved step %d; rerun the same command to resume", step)
            raise SystemExit(PREEMPTED_EXIT_STATUS)
    return state, EpochResult(results.collect(), progress.start, progress.seconds(), progress.windows)


class StepResults:
    """Per-track losses of the epoch's steps, each step's read one step late so the host never
    waits on the step it just dispatched. A non-finite step stops training, naming the step and
    this host's tracks of it."""

    def __init__(self, track_losses=()):
        self.track_losses = list(track_losses)
        self._pending = []

    def add(self, per_track, valid, finite, names, step: int) -> None:
        self._pending.append((per_track, valid, finite, names, step))
        self._drain(keep_last=1)

    def collect(self) -> list[float]:
        """Every step's losses so far (the host waits for the last step)."""
        self._drain(keep_last=0)
        return list(self.track_losses)

    def _drain(self, keep_last: int) -> None:
        while len(self._pending) > keep_last:
            per_track, valid, finite, names, step = self._pending.pop(0)
            if not bool(finite):
                tracks = ", ".join(str(n) for n in names if n)
                raise TrainingDivergedError(
                    f"non-finite loss or gradient at step {step} (track {tracks}); training stopped, the bad "
                    "update was not applied and nothing after it was saved: the latest checkpoint is the "
                    "last good state")
            self.track_losses += [float(x) for x in np.asarray(per_track)[np.asarray(valid)]]


class EpochProgress:
    """Progress lines within an epoch: whenever the tracks seen pass a multiple of
    train.log_every_tracks (batches of several tracks step over exact multiples)."""

    def __init__(self, run: Run, position: Position):
        self.epoch, self.every = position.epoch, run.config.train.log_every_tracks
        self.total = run.hosts.num_tracks - position.batches_done * run.hosts.rows  # this run's tracks
        self.start, self.tracks, self.windows = time.time(), 0, 0

    def update(self, batch: dict) -> None:
        before = self.tracks
        self.tracks += int(batch["present"].any(axis=1).sum())  # this host's rows that held a track
        self.windows += int(batch["present"].sum())
        if self.tracks // self.every > before // self.every:
            rate = self.tracks / self.seconds()
            logging.info("epoch %d: %d/%d tracks, %.2f tracks/s, ETA %.0fs", self.epoch + 1, self.tracks,
                         self.total, rate, max(self.total - self.tracks, 0) / rate)

    def seconds(self) -> float:
        return time.time() - self.start


def save_mid_epoch(run: Run, state, position: Position, batches_done: int, track_losses: list) -> None:
    meta = checkpoints.checkpoint_meta(run.config, run.tags, position.epoch, None, run.meta_extra)
    meta.update(step=int(state.step), best_score=float(position.best_score), batches_done=batches_done,
                epoch_track_losses=track_losses, hosts=run.hosts.count, batch_size=run.config.train.batch_size)
    run.store.save(int(state.step), state.variables, state.opt_state, meta, None, False)


def end_of_epoch(run: Run, state, position: Position, epoch: EpochResult) -> Position:
    """Validate, save the latest (and maybe the best) checkpoint, log. Returns the next Position."""
    config = run.config
    train_loss = float(np.mean(epoch.track_losses)) if epoch.track_losses else float("nan")
    val = evaluate.evaluate_split(config, "validation", state.variables, run.predict_step,
                                  run_keys(config.seed).inference, run.tags)
    if config.eval.tune_thresholds:
        run.meta_extra["thresholds"] = tune_thresholds(val["predictions"], len(run.tags)).tolist()
    score = val["metrics"][config.eval.best_metric]
    # An undefined metric (a tag with one class only everywhere) ranks below any real one, so the
    # first epoch always yields a best checkpoint.
    rank_score = float(score) if np.isfinite(score) else -1e9
    is_best = rank_score > position.best_score
    best_score = max(rank_score, position.best_score)
    meta = checkpoints.checkpoint_meta(config, run.tags, position.epoch, val["metrics"], run.meta_extra)
    meta.update(step=int(state.step), best_score=float(best_score), train_loss=train_loss,
                train_seconds=epoch.seconds, batches_done=None)
    run.store.save(int(state.step), state.variables, state.opt_state, meta, rank_score, is_best)
    _log_epoch(run, position.epoch, epoch, train_loss, val["metrics"], is_best)
    return Position(epoch=position.epoch + 1, best_score=best_score)


def _log_epoch(run: Run, epoch_index: int, epoch: EpochResult, train_loss: float, val: dict, is_best: bool):
    config = run.config
    run.epoch_seconds.append(time.time() - epoch.started)  # training and validation
    eta = np.mean(run.epoch_seconds) * (config.train.num_epochs - epoch_index - 1)
    rate = epoch.windows / max(epoch.seconds, 1e-9)
    logging.info("epoch %d/%d: train loss %.4f (%.1fs, %.1f windows/s); validation %s %.4f, MAA %.4f "
                 "(all-negative %.4f)%s; ETA %.0fs", epoch_index + 1, config.train.num_epochs, train_loss,
                 epoch.seconds, rate, config.eval.best_metric, val[config.eval.best_metric], val["mean_maa"],
                 val["mean_baseline_maa"], " *best*" if is_best else "", eta)
    if run.writer is not None:
        scalars = {"train/loss": train_loss, "train/windows_per_second": rate}
        scalars.update({f"validation/{name}": val[name] for name in ("mean_maa", "mean_roc_auc", "mean_pr_auc",
                                                                      "mean_f1")})
        run.writer.scalars(scalars, epoch_index + 1)
