"""Metrics against hand-computed values and definitions written out independently (pair counts,
precision at every cut), with ties."""
import numpy as np
import pytest

from jaxtag.evaluation import metrics


def _auc_by_pairs(scores, labels):
    """P(score of a positive > score of a negative), ties counting 1/2, over every pair."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


def _ap_by_cuts(scores, labels):
    """Sum over distinct thresholds t (descending) of (recall(t) - recall(previous t)) * precision(t),
    predicting score >= t."""
    total, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        tp = (predicted & labels).sum()
        recall = tp / labels.sum()
        total += (recall - previous_recall) * tp / predicted.sum()
        previous_recall = recall
    return total


def test_roc_auc_and_average_precision_match_their_definitions_with_ties():
    rng = np.random.default_rng(0)
    checked = 0
    for trial in range(20):
        n = rng.integers(5, 200)
        labels = rng.uniform(size=n) < rng.uniform(0.1, 0.9)
        if labels.all() or not labels.any():
            continue
        scores = np.round(rng.uniform(size=n) + 0.3 * labels, 1)  # rounding creates ties
        assert metrics.roc_auc(scores, labels) == pytest.approx(_auc_by_pairs(scores, labels), abs=1e-12)
        assert metrics.average_precision(scores, labels) == pytest.approx(_ap_by_cuts(scores, labels), abs=1e-12)
        checked += 1
    assert checked >= 15
    # A closed form: positives 0.9 and 0.4 among negatives 0.5, 0.1: AUC 3/4, AP (1 + 2/3) / 2.
    s, y = np.array([0.9, 0.5, 0.4, 0.1]), np.array([True, False, True, False])
    assert metrics.roc_auc(s, y) == pytest.approx(0.75)
    assert metrics.average_precision(s, y) == pytest.approx((1 + 2 / 3) / 2)


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
    assert m["roc_auc"]["x"] == pytest.approx(1.0)  # the positive (0.9) outscores both negatives
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
    tags = ["Emotion-Sad", "Emotion-Happy", "Instrument_-_Piano", "my own tag"]
    tracks = {"a": (np.array([[0.9, 0.2, 0.7, 0.5], [0.1, 0.8, 0.3, 0.5]]), np.array([[1, 0, 1, 1], [0, 1, 0, 0]]),
                    np.ones(2, bool))}
    m = metrics.evaluate(tracks, tags)
    # A tag outside CAL500exp's vocabulary belongs to no category (but is in the overall means).
    assert set(m["categories"]) == {"emotion", "instrument"}
    assert m["categories"]["emotion"]["num_tags"] == 2 and m["categories"]["instrument"]["num_tags"] == 1
    assert m["categories"]["emotion"]["mean_roc_auc"] == pytest.approx(1.0)
    assert m["roc_auc"]["my own tag"] == pytest.approx(0.5) and m["mean_roc_auc"] == pytest.approx(3.5 / 4)
