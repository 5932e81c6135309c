"""Training and evaluation loop (paper 4.3 and 5): `train_and_evaluate(config, workdir)`.

One jit-compiled step takes a batch of whole tracks padded to a length bucket (batch_size 1 is the
paper's setting), so it compiles once per bucket. The loss is summed over each track's unmasked
windows and averaged over the batch's tracks. Losses stay on the device until the epoch ends, so
the loop never waits on the step.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from jaxtag import checkpoint as ckpt_lib
from jaxtag import evaluation, losses, parallel
from jaxtag.config_validation import validate_config
from jaxtag.data import pipeline
from jaxtag.data.features import FrontendSettings
from jaxtag.errors import JaxtagError
from jaxtag.metrics import tune_thresholds
from jaxtag.models import create_model

BATCH_KEYS = ("mel", "labels", "mask", "present")


class TrainingDivergedError(JaxtagError):
    """A non-finite loss or gradient: training stops; the bad state is never saved."""


class _Preemption:
    """SIGTERM (preemption) sets a flag; the loop saves a checkpoint at the next step and exits.

    With several processes, one host's SIGTERM must stop every host at the same step (a checkpoint
    is a collective write): JAX's preemption service (set up by jax.distributed.initialize) catches
    the signal, tells the other hosts, and names a step that all of them reach.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._multi_host = jax.process_count() > 1

    def __enter__(self):
        import signal
        import threading
        if not self._multi_host and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def due(self, step: int) -> bool:
        """Whether to save and exit after `step`; called after every step, on every host."""
        if self._multi_host:
            from jax.experimental import multihost_utils
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True
        logging.warning("SIGTERM: saving a checkpoint after the current step, then exiting")

    def __exit__(self, *exc):
        import signal
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _fault_injection(step: int) -> None:
    """Crash tests: JAXTAG_FAULT=sigkill@N or sigterm@N signals this process after step N."""
    fault = os.environ.get("JAXTAG_FAULT", "")
    if "@" in fault:
        kind, at = fault.split("@")
        if step == int(at):
            import signal
            os.kill(os.getpid(), {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}[kind])


class TrainState(train_state.TrainState):
    batch_stats: Any = None   # batch-norm statistics of models that have them; {} otherwise

    @property
    def variables(self) -> dict:
        return {"params": self.params, **({"batch_stats": self.batch_stats} if self.batch_stats else {})}


def create_train_state(config, model, key) -> TrainState:
    d = config.data
    mel = jnp.zeros((1, 1, d.window_frames, d.n_mels), jnp.float32)
    variables = model.init({"params": key, "lstm_state": key}, mel, jnp.ones((1, 1), bool))
    tx = optax.adam(config.train.learning_rate)
    state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                              batch_stats=variables.get("batch_stats", {}))
    # A Python-int step would be weakly typed and force a second compilation after the first step.
    return state.replace(step=jnp.zeros((), jnp.int32))


@contextlib.contextmanager
def count_compilations():
    """Counts XLA compilations in the block (jax.monitoring's backend-compile events), as
    {"n": count}: an epoch over tracks of any lengths should compile once per length bucket."""
    counter = {"n": 0}
    active = [True]

    def listener(event, duration, **kwargs):
        if active[0] and event == "/jax/core/compile/backend_compile_duration":
            counter["n"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        active[0] = False  # listeners cannot be removed in every jax version: this one goes quiet
        try:
            from jax._src import monitoring
            monitoring._unregister_event_duration_listener_by_callback(listener)
        except (ImportError, AttributeError, AssertionError, ValueError):
            pass


def make_train_step(model, loss_name: str, pos_weight=None, mesh=None) -> Callable:
    """The jitted train step: (state, batch, key) -> (state, per-track losses [B], which rows
    held a track [B], whether the update was finite and applied). With a mesh, batches are split
    over its "data" axis and the state is replicated; gradients are averaged across devices by
    XLA (GSPMD), no pmap."""
    loss_fn = losses.get_loss(loss_name)
    pos_weight = None if pos_weight is None else np.asarray(pos_weight, np.float32)
    jit_kwargs = {}
    if mesh is not None:
        rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
        # Per-track losses come back replicated (a few floats): every host can read them.
        jit_kwargs = dict(in_shardings=(rep, data, rep), out_shardings=(rep, rep, rep, rep))

    @functools.partial(jax.jit, donate_argnums=(0,), **jit_kwargs)
    def train_step(state, batch, key):
        step_key = jax.random.fold_in(key, state.step)

        def objective(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
            scores, updates = model.apply(variables, batch["mel"], batch["present"], train=True,
                                          rngs={"lstm_state": step_key}, mutable=["batch_stats"])
            per_track = losses.track_loss(loss_fn(scores, batch["labels"], pos_weight), batch["mask"])
            n_tracks = jnp.maximum(jnp.sum(jnp.any(batch["present"], axis=1)), 1)
            return jnp.sum(per_track) / n_tracks, (per_track, updates)

        (loss, (per_track, updates)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))

        def update(state):
            state = state.apply_gradients(grads=grads)
            return state.replace(batch_stats=updates["batch_stats"]) if state.batch_stats else state

        # A non-finite loss or gradient never reaches the parameters; the host stops training.
        state = jax.lax.cond(finite, update, lambda s: s, state)
        # Which rows held a track: on many hosts, no host knows the others' padding rows.
        return state, per_track, jnp.any(batch["present"], axis=1), finite

    return train_step


def make_predict_step(model) -> Callable:
    @jax.jit
    def predict_step(variables, batch, key):
        return model.apply(variables, batch["mel"], batch["present"], rngs={"lstm_state": key})
    return predict_step


def checkpoint_meta(config, tags, epoch: int, metrics: dict | None, extra: dict) -> dict:
    """Everything needed to use a checkpoint without the config that trained it."""
    return {"epoch": epoch, "config": json.loads(config.to_json()), "tags": list(tags),
            "frontend": FrontendSettings.from_config(config.data).to_dict(),
            "model": config.model.name, "threshold": config.eval.threshold,
            "validation": _json_safe(metrics) if metrics else None, **extra}


def _json_safe(metrics: dict) -> dict:
    """Metrics as JSON-safe values: NaN becomes None."""
    return json.loads(json.dumps(metrics, allow_nan=True).replace("NaN", "null"))


def _device_batch(batch: dict) -> dict:
    return {k: batch[k] for k in BATCH_KEYS}


def _drain(pending: list, keep_last: int = 0) -> list[float]:
    """Pop finished steps (all but the last keep_last), check they were finite, return their
    per-track losses (every host's tracks). A non-finite step stops training, naming the step and
    this host's tracks of it."""
    out = []
    while len(pending) > keep_last:
        per_track, valid, finite, names, step = pending.pop(0)
        if not bool(finite):
            tracks = ", ".join(str(n) for n in names if n)
            raise TrainingDivergedError(
                f"non-finite loss or gradient at step {step} (track {tracks}); training stopped, the bad "
                "update was not applied and nothing after it was saved: the latest checkpoint is the "
                "last good state")
        out += [float(x) for x in np.asarray(per_track)[np.asarray(valid)]]
    return out


def _pos_weight(config, stats):
    if config.train.loss != "bce" or config.train.pos_weight == "none":
        return None
    rate = np.clip(np.asarray(stats["positive_rate"]), 1e-3, 1 - 1e-3)
    return np.clip((1 - rate) / rate, 1.0, 20.0)  # balanced, capped for very rare tags


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (resuming from the latest checkpoint in workdir), then evaluate the best checkpoint on
    the test split. Returns the test metrics."""
    validate_config(config)
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.train.batch_size, mesh)  # before any work
    os.makedirs(workdir, exist_ok=True)
    builder = parallel.on_each_host_in_turn(lambda: pipeline.prepare(config))
    tags = builder.builder_config.settings.tags
    host, n_hosts = jax.process_index(), jax.process_count()
    lengths_by_host = None
    n_train = builder.info.splits["train"].num_examples
    if n_hosts > 1:  # each host reads its own shard; all agree on each step's bucket from all lengths
        lengths_by_host = parallel.gather_from_hosts(pipeline.host_shard_lengths(config, host, n_hosts))
        n_train = len(lengths_by_host[host])
    rows = config.train.batch_size // n_hosts  # this host's rows of each step

    stats = None
    if config.model.normalize or config.train.pos_weight != "none":
        stats = pipeline.train_statistics(config)
    model = create_model(config.model, len(tags), input_stats=stats)
    key = jax.random.PRNGKey(config.seed)
    init_key, step_key, eval_key = jax.random.split(key, 3)
    state = create_train_state(config, model, init_key)
    store = ckpt_lib.CheckpointStore(workdir, keep=config.train.keep_checkpoints)
    start_epoch, skip_batches, resumed_losses, best_score = 0, 0, [], -np.inf
    restored = store.restore_latest(state.variables, state.opt_state)
    if restored is not None:
        variables, opt_state, meta = restored
        best_score = meta["best_score"] if meta.get("best_score") is not None else -np.inf
        if meta.get("batches_done") is None:   # saved at the end of an epoch
            start_epoch = meta["epoch"] + 1
        else:                                  # saved mid-epoch: replay the rest of that epoch
            start_epoch = meta["epoch"]
            layout = {"hosts": n_hosts, "batch_size": config.train.batch_size}
            saved_layout = {k: meta.get(k, v) for k, v in layout.items()}  # older checkpoints: as now
            if saved_layout == layout:
                skip_batches, resumed_losses = meta["batches_done"], list(meta["epoch_track_losses"])
            else:  # an epoch's batches depend on both: where it stopped means nothing here
                logging.warning("The checkpoint was saved mid-epoch with %s, this run has %s: epoch %d restarts "
                                "from its first batch", saved_layout, layout, start_epoch + 1)
        state = state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}),
                              opt_state=opt_state, step=jnp.asarray(meta["step"], jnp.int32))
        logging.info("Resumed at epoch %d, batch %d (step %d) from %s", start_epoch + 1, skip_batches,
                     meta["step"], workdir)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=1))

    writer = _summary_writer(workdir)
    state = parallel.replicate(state, mesh)
    train_step = make_train_step(model, config.train.loss, _pos_weight(config, stats), mesh)
    predict_step = make_predict_step(model)
    best_metric = config.eval.best_metric
    extra_meta = {"input_stats": stats}
    every = config.train.checkpoint_every_steps

    def save_mid_epoch(epoch, batches_done, track_losses):
        meta = checkpoint_meta(config, tags, epoch, None, extra_meta)
        meta.update(step=int(state.step), best_score=float(best_score), batches_done=batches_done,
                    epoch_track_losses=track_losses, hosts=n_hosts, batch_size=config.train.batch_size)
        store.save(int(state.step), state.variables, state.opt_state, meta, None, False)

    epoch_seconds = []  # train + validation time of each epoch run here, for the ETA
    try:
        with _Preemption() as preemption:
            for epoch in range(start_epoch, config.train.num_epochs):
                t0 = time.time()
                skip = skip_batches if epoch == start_epoch else 0
                track_losses = resumed_losses if epoch == start_epoch else []
                pending, n_seen, n_windows = [], 0, 0
                host_step = int(state.step)  # counted on the host: reading state.step would wait on the device
                batches = pipeline.train_batches(config, epoch, host, n_hosts, lengths_by_host)
                for i, batch in enumerate(batches):
                    if i < skip:  # the same order as before the interruption: skip what was done
                        continue
                    # A mid-epoch checkpoint is due after every `every` steps, written once the next
                    # batch exists: the epoch's last step gets the end-of-epoch checkpoint instead.
                    if every and i > skip and i % every == 0:
                        track_losses += _drain(pending)
                        save_mid_epoch(epoch, i, track_losses)
                    state, per_track, track_valid, finite = train_step(
                        state, parallel.shard_batch(_device_batch(batch), mesh), step_key)
                    host_step += 1
                    valid = batch["present"].any(axis=1)  # this host's rows
                    # Checked one step late, so the host never waits on the step it just dispatched.
                    track_losses += _drain(pending, keep_last=1)
                    pending.append((per_track, track_valid, finite, batch["track"], host_step))
                    n_before, n_seen = n_seen, n_seen + int(valid.sum())
                    n_windows += int(batch["present"].sum())
                    # Logged whenever n_seen passes a multiple of log_every_tracks (batches of several
                    # tracks step over exact multiples).
                    if n_seen // config.train.log_every_tracks > n_before // config.train.log_every_tracks:
                        rate = n_seen / (time.time() - t0)
                        logging.info("epoch %d: %d/%d tracks, %.2f tracks/s, ETA %.0fs", epoch + 1, n_seen,
                                     n_train - skip * rows, rate,
                                     max(n_train - skip * rows - n_seen, 0) / rate)
                    _fault_injection(host_step)
                    if preemption.due(host_step):
                        track_losses += _drain(pending)
                        save_mid_epoch(epoch, i + 1, track_losses)
                        store.wait()
                        logging.warning("Preempted: saved step %d; rerun the same command to resume", host_step)
                        raise SystemExit(143)
                track_losses += _drain(pending)
                train_loss = float(np.mean(track_losses)) if track_losses else float("nan")
                train_seconds = time.time() - t0
                val = evaluation.evaluate_split(config, "validation", state.variables, predict_step, eval_key, tags)
                if config.eval.tune_thresholds:
                    extra_meta["thresholds"] = tune_thresholds(val["predictions"], len(tags)).tolist()
                score = val["metrics"][best_metric]
                # An undefined metric (a tag with one class only everywhere) ranks below any real one,
                # so the first epoch always yields a best checkpoint.
                rank_score = float(score) if np.isfinite(score) else -1e9
                is_best = rank_score > best_score
                if is_best:
                    best_score = rank_score
                meta = checkpoint_meta(config, tags, epoch, val["metrics"], extra_meta)
                meta.update(step=int(state.step), best_score=float(best_score), train_loss=train_loss,
                            train_seconds=train_seconds, batches_done=None)
                store.save(int(state.step), state.variables, state.opt_state, meta, rank_score, is_best)
                epoch_seconds.append(time.time() - t0)
                eta = np.mean(epoch_seconds) * (config.train.num_epochs - epoch - 1)
                logging.info("epoch %d/%d: train loss %.4f (%.1fs, %.1f windows/s); validation %s %.4f, "
                             "MAA %.4f (all-negative %.4f)%s; ETA %.0fs", epoch + 1, config.train.num_epochs,
                             train_loss, train_seconds, n_windows / train_seconds, best_metric, score,
                             val["metrics"]["mean_maa"], val["metrics"]["mean_baseline_maa"],
                             " *best*" if is_best else "", eta)
                if writer is not None:
                    writer.scalar("train/loss", train_loss, epoch + 1)
                    writer.scalar("train/windows_per_second", n_windows / train_seconds, epoch + 1)
                    for name in ("mean_maa", "mean_roc_auc", "mean_pr_auc", "mean_f1"):
                        writer.scalar(f"validation/{name}", val["metrics"][name], epoch + 1)
                    writer.flush()
    finally:
        # Async checkpoint writes must finish (or fail loudly) before the process goes on or exits.
        store.wait()
        store.close()
    return evaluation.evaluate_checkpoint(config, workdir, "test")


class _SummaryWriter:
    """TensorBoard event files via tf.summary (TensorFlow is already a dependency)."""

    def __init__(self, logdir: str):
        import tensorflow as tf
        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)

    def scalar(self, name: str, value: float, step: int) -> None:
        with self._writer.as_default():
            self._tf.summary.scalar(name, value, step=step)

    def flush(self) -> None:
        self._writer.flush()


def _summary_writer(workdir: str):
    if jax.process_index() != 0:  # only process 0 writes logs
        return None
    return _SummaryWriter(os.path.join(workdir, "tensorboard"))
