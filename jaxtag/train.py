"""Training and evaluation loop (paper 4.3 and 5): `train_and_evaluate(config, workdir)`.

One jit-compiled step takes a batch of whole tracks padded to a length bucket (batch_size 1 is the
paper's setting), so it compiles once per bucket. The loss is summed over each track's unmasked
windows and averaged over the batch's tracks. Losses stay on the device until logged, so the epoch
loop does not wait on the step.
"""
from __future__ import annotations

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
from jaxtag import evaluation, losses
from jaxtag.config_validation import validate_config
from jaxtag.data import pipeline
from jaxtag.data.features import FrontendSettings
from jaxtag.models import create_model

BATCH_KEYS = ("mel", "labels", "mask", "present")


def create_train_state(config, num_tags: int, key) -> train_state.TrainState:
    model = create_model(config.model, num_tags)
    d = config.data
    mel = jnp.zeros((1, 1, d.window_frames, d.n_mels), jnp.float32)
    present = jnp.ones((1, 1), bool)
    params = model.init({"params": key, "lstm_state": key}, mel, present)["params"]
    tx = optax.adam(config.train.learning_rate)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    # A Python-int step would be weakly typed and force a second compilation after the first step.
    return state.replace(step=jnp.zeros((), jnp.int32))


def make_train_step(model, loss_name: str) -> Callable:
    loss_fn = losses.get_loss(loss_name)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def train_step(state, batch, key):
        step_key = jax.random.fold_in(key, state.step)

        def objective(params):
            scores = model.apply({"params": params}, batch["mel"], batch["present"],
                                 rngs={"lstm_state": step_key})
            per_track = losses.track_loss(loss_fn(scores, batch["labels"]), batch["mask"])
            n_tracks = jnp.maximum(jnp.sum(jnp.any(batch["present"], axis=1)), 1)
            return jnp.sum(per_track) / n_tracks, per_track

        (_, per_track), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), per_track

    return train_step


def make_predict_step(model) -> Callable:
    @jax.jit
    def predict_step(params, batch, key):
        return model.apply({"params": params}, batch["mel"], batch["present"], rngs={"lstm_state": key})
    return predict_step


def checkpoint_meta(config, tags, epoch: int, metrics: dict | None) -> dict:
    return {"epoch": epoch, "config": json.loads(config.to_json()), "tags": list(tags),
            "frontend": FrontendSettings.from_config(config.data).to_dict(),
            "model": config.model.name, "threshold": config.eval.threshold,
            "validation": _finite(metrics) if metrics else None}


def _finite(metrics: dict) -> dict:
    """Metrics as JSON-safe values: NaN becomes None."""
    return json.loads(json.dumps(metrics, allow_nan=True).replace("NaN", "null"))


def _device_batch(batch: dict) -> dict:
    return {k: batch[k] for k in BATCH_KEYS}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Train (resuming from the latest checkpoint in workdir), then evaluate the best checkpoint on
    the test split. Returns the test metrics."""
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    builder = pipeline.prepare(config)
    tags = builder.builder_config.settings.tags
    n_train = builder.info.splits["train"].num_examples

    key = jax.random.PRNGKey(config.seed)
    init_key, step_key, eval_key = jax.random.split(key, 3)
    state = create_train_state(config, len(tags), init_key)
    model = create_model(config.model, len(tags))
    store = ckpt_lib.CheckpointStore(workdir, keep=config.train.keep_checkpoints)
    start_epoch, best_score = 0, -np.inf
    restored = store.restore_latest(state.params, state.opt_state)
    if restored is not None:
        params, opt_state, meta = restored
        start_epoch = meta["epoch"] + 1
        best_score = (meta.get("best_score") if meta.get("best_score") is not None else -np.inf)
        state = state.replace(params=params, opt_state=opt_state, step=jnp.asarray(meta["step"], jnp.int32))
        logging.info("Resumed from epoch %d (step %d) in %s", meta["epoch"], meta["step"], workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=1))

    writer = _summary_writer(workdir)
    train_step = make_train_step(model, config.train.loss)
    predict_step = make_predict_step(model)
    buckets = tuple(config.train.length_buckets)
    best_metric = config.eval.best_metric

    try:
        for epoch in range(start_epoch, config.train.num_epochs):
            t0 = time.time()
            ds = pipeline.load_split(config, "train", seed=config.seed * 100003 + epoch)
            per_track_losses, n_seen, n_windows = [], 0, 0
            for batch in pipeline.bucketed_batches(ds, config.train.batch_size, buckets):
                state, per_track = train_step(state, _device_batch(batch), step_key)
                valid = batch["present"].any(axis=1)
                per_track_losses.append((per_track, valid))
                n_seen += int(valid.sum())
                n_windows += int(batch["present"].sum())
                if n_seen and n_seen % config.train.log_every_tracks == 0:
                    rate = n_seen / (time.time() - t0)
                    logging.info("epoch %d: %d/%d tracks, %.2f tracks/s, ETA %.0fs", epoch + 1, n_seen,
                                 n_train, rate, (n_train - n_seen) / rate)
            train_loss = float(np.mean(np.concatenate(
                [np.asarray(l)[v] for l, v in per_track_losses]))) if per_track_losses else float("nan")
            train_seconds = time.time() - t0
            val = evaluation.evaluate_split(config, "validation", state.params, predict_step, eval_key, tags)
            score = val["metrics"][best_metric]
            # An undefined metric (e.g. a tag with one class only everywhere) ranks below any real one,
            # so the first epoch always yields a best checkpoint.
            rank_score = float(score) if np.isfinite(score) else -1e9
            is_best = rank_score > best_score
            if is_best:
                best_score = rank_score
            meta = checkpoint_meta(config, tags, epoch, val["metrics"])
            meta.update(step=int(state.step), best_score=None if not np.isfinite(best_score) else float(best_score))
            store.save(int(state.step), state.params, state.opt_state, meta, rank_score, is_best)
            logging.info("epoch %d/%d: train loss %.4f (%.1fs, %.1f windows/s); validation %s %.4f, "
                         "MAA %.4f (all-negative %.4f)%s", epoch + 1, config.train.num_epochs, train_loss,
                         train_seconds, n_windows / train_seconds, best_metric, score,
                         val["metrics"]["mean_maa"], val["metrics"]["mean_baseline_maa"], " *best*" if is_best else "")
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
