"""Evaluate a model on a split: per-window predictions, metrics, and the files users re-analyse.

Writes <workdir>/eval/<split>_metrics.json and <workdir>/eval/<split>_predictions.npz (arrays keyed
"<track>/scores", "<track>/labels", "<track>/mask"; no pickles).
"""
from __future__ import annotations

import copy
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from jaxtag.files import write_atomic
from jaxtag.data import pipeline
from jaxtag.data.features import FrontendSettings
from jaxtag.errors import ConfigError
from jaxtag.evaluation import metrics as metrics_lib
from jaxtag.models import create_model, run_keys, to_probabilities
from jaxtag.training import checkpoints
from jaxtag.training.steps import device_batch, make_predict_step


def predict_split(config, split: str, variables, predict_step, key) -> dict[str, tuple]:
    """{track: (scores [W, C], labels [W, C], mask [W])} over a split, in a fixed order."""
    ds = pipeline.load_split(config, split, shuffle=False)
    out = {}
    for batch in pipeline.bucketed_batches(ds, config.train.batch_size, tuple(config.train.length_buckets)):
        scores = np.asarray(predict_step(variables, device_batch(batch), key))
        scores = to_probabilities(scores, config.model.output_activation)
        for i, name in enumerate(batch["track"]):
            if name:
                n = int(batch["present"][i].sum())
                out[str(name)] = (scores[i, :n].astype(np.float32), batch["labels"][i, :n], batch["mask"][i, :n])
    return out


def evaluate_split(config, split, variables, predict_step, key, tags, threshold=None) -> dict:
    predictions = predict_split(config, split, variables, predict_step, key)
    threshold = config.eval.threshold if threshold is None else threshold
    return {"metrics": metrics_lib.evaluate(predictions, tags, threshold), "predictions": predictions}


def write_results(workdir: str, split: str, metrics: dict, predictions: dict) -> tuple[str, str]:
    folder = os.path.join(workdir, "eval")
    os.makedirs(folder, exist_ok=True)
    metrics_path = os.path.join(folder, f"{split}_metrics.json")
    # standard JSON: NaN -> null
    write_atomic(metrics_path, json.dumps(checkpoints.json_safe(metrics), indent=1, allow_nan=False))
    arrays = {}
    for name, (scores, labels, mask) in predictions.items():
        arrays[f"{name}/scores"], arrays[f"{name}/labels"], arrays[f"{name}/mask"] = scores, labels, mask
    pred_path = os.path.join(folder, f"{split}_predictions.npz")
    write_atomic(pred_path, lambda f: np.savez_compressed(f, **arrays))
    return metrics_path, pred_path


def format_table(metrics: dict) -> str:
    lines = [f"{'tag':<36}{'MAA':>7}{'base':>7}{'ROC-AUC':>9}{'PR-AUC':>8}{'F1':>7}"]
    for t in metrics["tags"]:
        lines.append(f"{t:<36}{metrics['maa'][t]:>7.3f}{metrics['baseline_maa'][t]:>7.3f}"
                     f"{metrics['roc_auc'][t]:>9.3f}{metrics['pr_auc'][t]:>8.3f}{metrics['f1'][t]:>7.3f}")
    thresholds = np.broadcast_to(np.asarray(metrics["threshold"]), (len(metrics["tags"]),))
    if np.ptp(thresholds) > 0:
        lines.append(f"(per-tag thresholds tuned on validation: {np.round(thresholds, 2).tolist()})")
    lines.append(f"{'mean':<36}{metrics['mean_maa']:>7.3f}{metrics['mean_baseline_maa']:>7.3f}"
                 f"{metrics['mean_roc_auc']:>9.3f}{metrics['mean_pr_auc']:>8.3f}{metrics['mean_f1']:>7.3f}")
    return "\n".join(lines)


# The data settings a checkpoint fixes: its frontend, tags, label set and rules, and split
# (evaluating on another split could score training tracks). Where the data lives comes from the
# command's config.
_CHECKPOINT_DATA_FIELDS = tuple(f for f in FrontendSettings.__dataclass_fields__) + (
    "tags", "label_set", "unannotated", "split_seed", "split_fractions", "synthetic")


def evaluation_config(config, meta: dict, workdir: str) -> ml_collections.ConfigDict:
    """config with the model and data settings of the checkpoint (meta), so a checkpoint is
    evaluated as it was trained whatever the command's config says, except where the data lives.
    A config naming another model than the checkpoint's is refused: it is the wrong command."""
    saved = meta["config"]
    if saved["model"]["name"] != config.model.name:
        raise ConfigError(f"{workdir}: its checkpoint is a {saved['model']['name']!r} model but the config names "
                          f"{config.model.name!r}; evaluate it with the config it was trained with "
                          f"(saved as {os.path.join(workdir, 'config.json')})")
    merged = copy.deepcopy(config)
    with merged.unlocked():
        merged.seed = saved.get("seed", config.seed)  # the seed of the inference key (random LSTM state)
        merged.model = ml_collections.ConfigDict({**config.model.to_dict(), **saved["model"]})
        for field in _CHECKPOINT_DATA_FIELDS:
            if field in saved["data"]:
                value = saved["data"][field]
                merged.data[field] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return merged


def evaluate_checkpoint(config, workdir: str, split: str = "test", which: str = checkpoints.BEST) -> dict:
    """Evaluate the best (or latest) checkpoint of workdir on a split and write the result files.
    The model and data settings are the checkpoint's (see evaluation_config)."""
    variables, meta = checkpoints.restore_for_inference(workdir, which)
    config = evaluation_config(config, meta, workdir)
    tags = meta["tags"]
    model = create_model(config.model, len(tags), input_stats=meta.get("input_stats"))
    threshold = checkpoints.checkpoint_threshold(meta, len(tags))
    result = evaluate_split(config, split, variables, make_predict_step(model), run_keys(config.seed).inference,
                            tags, threshold)
    validation = meta.get("validation") or {}   # the validation metrics the checkpoint was saved with
    result["metrics"]["checkpoint"] = {
        "epoch": meta["epoch"], "step": meta.get("step"), "which": which,
        "validation": {k: validation[k] for k in ("mean_roc_auc", "mean_pr_auc", "mean_f1", "mean_maa") if k in validation}}
    if jax.process_index() == 0:  # one writer in a multi-host run
        paths = write_results(workdir, split, result["metrics"], result["predictions"])
        print(f"{split} metrics of the {which} checkpoint (epoch {meta['epoch'] + 1}):")
        print(format_table(result["metrics"]))
        logging.info("Wrote %s and %s", *paths)
    return result["metrics"]
