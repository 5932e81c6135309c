"""Evaluate a model on a split: per-window predictions, metrics, and the files users re-analyse.

Writes <workdir>/eval/<split>_metrics.json and <workdir>/eval/<split>_predictions.npz (arrays keyed
"<track>/scores", "<track>/labels", "<track>/mask"; no pickles).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from jaxtag import checkpoint as ckpt_lib
from jaxtag import metrics as metrics_lib
from jaxtag.data import pipeline
from jaxtag.models import to_probabilities


def predict_split(config, split: str, variables, predict_step, key) -> dict[str, tuple]:
    """{track: (scores [W, C], labels [W, C], mask [W])} over a split, in a fixed order."""
    ds = pipeline.load_split(config, split, shuffle=False)
    out = {}
    for batch in pipeline.bucketed_batches(ds, config.train.batch_size, tuple(config.train.length_buckets)):
        scores = np.asarray(predict_step(variables, {k: batch[k] for k in ("mel", "labels", "mask", "present")}, key))
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
    tmp = metrics_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=1)
    os.replace(tmp, metrics_path)
    arrays = {}
    for name, (scores, labels, mask) in predictions.items():
        arrays[f"{name}/scores"], arrays[f"{name}/labels"], arrays[f"{name}/mask"] = scores, labels, mask
    pred_path = os.path.join(folder, f"{split}_predictions.npz")
    tmp = pred_path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, pred_path)
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


def evaluate_checkpoint(config, workdir: str, split: str = "test", which: str = ckpt_lib.BEST) -> dict:
    """Evaluate the best (or latest) checkpoint of workdir on a split and write the result files."""
    from jaxtag.train import make_predict_step
    from jaxtag.models import create_model
    variables, meta = ckpt_lib.restore_for_inference(workdir, which)
    tags = meta["tags"]
    model = create_model(config.model, len(tags), input_stats=meta.get("input_stats"))
    key = jax.random.split(jax.random.PRNGKey(config.seed), 3)[2]
    threshold = ckpt_lib.checkpoint_threshold(meta, len(tags))
    result = evaluate_split(config, split, variables, make_predict_step(model), key, tags, threshold)
    result["metrics"]["checkpoint"] = {"epoch": meta["epoch"], "step": meta.get("step"), "which": which}
    if jax.process_index() == 0:  # one writer in a multi-host run
        paths = write_results(workdir, split, result["metrics"], result["predictions"])
        print(f"{split} metrics of the {which} checkpoint (epoch {meta['epoch'] + 1}):")
        print(format_table(result["metrics"]))
        logging.info("Wrote %s and %s", *paths)
    return result["metrics"]
