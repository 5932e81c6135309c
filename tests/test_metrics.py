"""Metrics against hand-computed values and scikit-learn as an independent reference."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from jaxtag import metrics


def test_roc_auc_and_average_precision_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = rng.integers(5, 200)
        labels = rng.uniform(size=n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            continue
        scores = np.round(rng.uniform(size=n) + 0.3 * labels, 1)  # rounding creates ties
        assert metrics.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert metrics.average_precision(scores, labels) == pytest.approx(
            average_precision_score(labels, scores), abs=1e-12)


def test_undefined_auc_is_nan():
    assert np.isnan(metrics.roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    assert np.isnan(metrics.average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_maa_averages_per_track_accuracies_over_tracks():
    # Track A: 4 unmasked windows, tag 0 right on 3 -> 0.75. Track B: 1 window (one masked), right -> 1.0.
    a = (np.array([[0.9], [0.8], [0.1], [0.7]]), np.array([[1], [1], [0], [0]]), np.ones(4, bool))
    b = (np.array([[0.2], [0.9]]), np.array([[0], [0]]), np.array([True, False]))
    empty = (np.array([[0.9]]), np.array([[1]]), np.array([False]))  # no unmasked window: skipped
    assert metrics.mean_average_accuracy([a, b, empty], 0.5)[0] == pytest.approx((0.75 + 1.0) / 2)


def test_evaluate_reports_baseline_and_per_tag_thresholds():
    tracks = {"a": (np.array([[0.9, 0.4], [0.2, 0.6]]), np.array([[1, 0], [0, 1]]), np.ones(2, bool)),
              "b": (np.array([[0.7, 0.1]]), np.array([[0, 0]]), np.ones(1, bool))}
    m = metrics.evaluate(tracks, ["x", "y"], threshold=0.5)
    assert m["maa"]["x"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["baseline_maa"]["x"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["baseline_maa"]["y"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["roc_auc"]["x"] == pytest.approx(roc_auc_score([1, 0, 0], [0.9, 0.2, 0.7]))
    # F1 of x at 0.5: predictions 1,0,1 vs truth 1,0,0 -> TP 1, FP 1 -> 2/3.
    assert m["f1"]["x"] == pytest.approx(2 / 3)
    per_tag = metrics.evaluate(tracks, ["x", "y"], threshold=np.array([0.8, 0.5]))
    assert per_tag["f1"]["x"] == pytest.approx(1.0)


def test_tuned_threshold_maximises_f1_over_all_cut_points():
    rng = np.random.default_rng(1)
    for _ in range(10):
        labels = rng.uniform(size=60) < 0.3
        scores = np.round(rng.uniform(size=60) * 0.7 + 0.3 * labels, 2)
        thr = metrics.best_f1_threshold(scores, labels)

        def f1(t):
            pred = scores >= t
            tp = (pred & labels).sum()
            return 2 * tp / (pred.sum() + labels.sum())

        best = max(f1(t) for t in np.unique(scores))  # brute force over every distinct cut
        assert f1(thr) == pytest.approx(best)
    assert metrics.best_f1_threshold(np.array([0.2, 0.9]), np.array([0, 0])) == 0.5


def test_category_means():
    tags = ["Emotion-Sad", "Emotion-Happy", "Instrument_-_Piano"]
    tracks = {"a": (np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.3]]), np.array([[1, 0, 1], [0, 1, 0]]), np.ones(2, bool))}
    m = metrics.evaluate(tracks, tags)
    assert m["categories"]["emotion"]["num_tags"] == 2 and m["categories"]["instrument"]["num_tags"] == 1
    assert m["categories"]["emotion"]["mean_roc_auc"] == pytest.approx(1.0)
