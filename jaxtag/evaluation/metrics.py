"""Evaluation metrics: the paper's MAA (section 5, ours) plus the field's standard ones
(ROC-AUC, PR-AUC and the F1-optimal threshold from scikit-learn).

Every function takes per-track arrays: scores [W, C] (probabilities), labels [W, C] in {0, 1} and
mask [W] (windows that count).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn import metrics as sklearn_metrics

from jaxtag.data.tags import tag_category


def track_accuracy(scores, labels, mask, threshold) -> np.ndarray:
    """Per-tag accuracy (TP+TN)/(TP+TN+FP+FN) of thresholded scores over a track's unmasked windows.
    NaN for every tag when the track has no unmasked window. `threshold`: scalar or per tag."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.full(np.shape(labels)[-1], np.nan)
    pred = np.asarray(scores)[mask] >= np.asarray(threshold)
    return np.mean(pred == (np.asarray(labels)[mask] > 0.5), axis=0)


def mean_average_accuracy(tracks: Sequence[tuple], threshold=0.5) -> np.ndarray:
    """MAA per tag (paper 5): per-track accuracies averaged over the N tracks that have an
    unmasked window. tracks: sequence of (scores, labels, mask)."""
    accs = [track_accuracy(s, l, m, threshold) for s, l, m in tracks if np.any(m)]
    if not accs:
        raise ValueError("no track has an unmasked window")
    return np.mean(accs, axis=0)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve for one tag (scikit-learn's). NaN if one class is absent."""
    pos = np.asarray(labels) > 0.5
    if pos.all() or not pos.any():
        return float("nan")
    return float(sklearn_metrics.roc_auc_score(pos, np.asarray(scores, np.float64)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """PR-AUC as average precision for one tag (scikit-learn's). NaN without positives."""
    pos = np.asarray(labels) > 0.5
    if not pos.any():
        return float("nan")
    return float(sklearn_metrics.average_precision_score(pos, np.asarray(scores, np.float64)))


def _nanmean(values) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(np.isfinite(values)) else float("nan")


def evaluate(tracks: Mapping[str, tuple], tags: Sequence[str], threshold=0.5) -> dict:
    """All metrics for {track: (scores, labels, mask)}.

    maa: paper's per-tag MAA; baseline_maa: MAA of predicting every tag absent; roc_auc and pr_auc:
    per tag over all unmasked windows pooled (NaN where a tag has one class only; macro means skip
    those); f1 per tag at the threshold.
    """
    items = list(tracks.values())
    maa = mean_average_accuracy(items, threshold)
    baseline = mean_average_accuracy([(np.zeros_like(np.asarray(l, np.float64)), l, m) for _, l, m in items], 0.5)
    scores = np.concatenate([np.asarray(s)[np.asarray(m, bool)] for s, _, m in items])
    labels = np.concatenate([np.asarray(l)[np.asarray(m, bool)] for _, l, m in items])
    rocs = [roc_auc(scores[:, k], labels[:, k]) for k in range(len(tags))]
    aps = [average_precision(scores[:, k], labels[:, k]) for k in range(len(tags))]
    thr = np.broadcast_to(np.asarray(threshold, np.float64), (len(tags),))
    pred = scores >= thr
    truth = labels > 0.5
    tp = (pred & truth).sum(0)
    denominator = 2 * tp + (pred & ~truth).sum(0) + (~pred & truth).sum(0)  # 2TP + FP + FN
    f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), np.nan)
    per = lambda v: {t: float(x) for t, x in zip(tags, v)}
    return {
        "tags": list(tags),
        "threshold": float(thr[0]) if np.ptp(thr) == 0 else thr.tolist(),
        "num_tracks": len(items), "num_windows": int(len(scores)),
        "maa": per(maa), "mean_maa": _nanmean(maa),
        "baseline_maa": per(baseline), "mean_baseline_maa": _nanmean(baseline),
        "roc_auc": per(rocs), "mean_roc_auc": _nanmean(rocs),
        "pr_auc": per(aps), "mean_pr_auc": _nanmean(aps),
        "f1": per(f1), "mean_f1": _nanmean(f1),
        "positive_rate": per(truth.mean(0)),
        "categories": _category_means(tags, maa, baseline, rocs, aps, f1),
    }


def _category_means(tags, maa, baseline, rocs, aps, f1) -> dict:
    """Macro means per CAL500exp tag category (emotion, instrument, vocals, solo) present in
    `tags`; tags of another vocabulary (a user's own labels) belong to none."""
    cats = [tag_category(t) for t in tags]
    out = {}
    for cat in dict.fromkeys(c for c in cats if c is not None):
        idx = [i for i, c in enumerate(cats) if c == cat]
        pick = lambda v: [v[i] for i in idx]
        out[cat] = {"num_tags": len(idx), "mean_maa": _nanmean(pick(maa)),
                    "mean_baseline_maa": _nanmean(pick(baseline)), "mean_roc_auc": _nanmean(pick(rocs)),
                    "mean_pr_auc": _nanmean(pick(aps)), "mean_f1": _nanmean(pick(f1))}
    return out


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray, default: float = 0.5) -> float:
    """The threshold that maximises F1 for one tag (over scikit-learn's precision-recall curve):
    midway between the lowest score of the best prediction set and the next lower score, so it
    is not on a training score. Among equal F1, the smaller prediction set. `default` when the
    tag has no positive."""
    pos = np.asarray(labels) > 0.5
    if not pos.any():
        return default
    precision, recall, thresholds = sklearn_metrics.precision_recall_curve(pos, np.asarray(scores, np.float64))
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # thresholds ascend: the last maximum is the highest
    lower = thresholds[best - 1] if best > 0 else thresholds[best] - 1e-6
    return float((thresholds[best] + lower) / 2)


def tune_thresholds(tracks: Mapping[str, tuple], n_tags: int) -> np.ndarray:
    """Per-tag thresholds maximising F1 over the unmasked windows of {track: (scores, labels, mask)}."""
    items = list(tracks.values())
    scores = np.concatenate([np.asarray(s)[np.asarray(m, bool)] for s, _, m in items])
    labels = np.concatenate([np.asarray(l)[np.asarray(m, bool)] for _, l, m in items])
    return np.array([best_f1_threshold(scores[:, k], labels[:, k]) for k in range(n_tags)])
