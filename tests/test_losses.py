"""The multi-label margin loss against hand-computed values and a literal loop over PyTorch's definition."""
import itertools

import numpy as np
import pytest

from jaxtag.training import losses


def reference_margin_loss(x, y):
    """PyTorch MultiLabelMarginLoss, written as its documentation states it, for one sample."""
    c = len(x)
    targets = [j for j in range(c) if y[j] > 0.5]
    total = 0.0
    for j in targets:
        for i in range(c):
            if i not in targets:
                total += max(0.0, 1.0 - (x[j] - x[i]))
    return total / c


def test_hand_computed_value():
    x = np.array([0.1, 0.2, 0.4, 0.8], np.float32)
    y = np.array([0, 1, 0, 1], np.float32)  # positives 1 and 3; negatives 0 and 2
    # j=1: (1-(0.2-0.1)) + (1-(0.2-0.4)) = 0.9 + 1.2 ; j=3: (1-0.7) + (1-0.4) = 0.3 + 0.6 ; / 4
    assert float(losses.multilabel_margin_loss(x, y)) == pytest.approx((0.9 + 1.2 + 0.3 + 0.6) / 4, rel=1e-6)


def test_all_positive_and_all_negative_windows_cost_nothing():
    x = np.array([0.3, 0.9, 0.1], np.float32)
    assert float(losses.multilabel_margin_loss(x, np.ones(3))) == 0.0
    assert float(losses.multilabel_margin_loss(x, np.zeros(3))) == 0.0


def test_ties_cost_one_per_pair():
    x = np.full(5, 0.5, np.float32)
    y = np.array([1, 1, 0, 0, 0], np.float32)
    assert float(losses.multilabel_margin_loss(x, y)) == pytest.approx(2 * 3 / 5)


def test_matches_reference_on_random_batches():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, 7, 18)).astype(np.float32)
    y = (rng.uniform(size=(3, 7, 18)) < 0.3).astype(np.float32)
    got = np.asarray(losses.multilabel_margin_loss(x, y))
    assert got.shape == (3, 7)
    for b, w in itertools.product(range(3), range(7)):
        assert got[b, w] == pytest.approx(reference_margin_loss(x[b, w], y[b, w]), rel=1e-5)


def test_track_loss_sums_unmasked_windows_only():
    per_window = np.array([[1.0, 2.0, 4.0], [8.0, 16.0, np.nan]], np.float32)
    mask = np.array([[True, False, True], [True, True, False]])
    np.testing.assert_allclose(losses.track_loss(per_window, mask), [5.0, 24.0])


def test_bce_matches_closed_form_and_positive_weight():
    logits = np.array([[2.0, -1.0, 0.0]], np.float32)
    labels = np.array([[1.0, 0.0, 1.0]], np.float32)
    sig = 1 / (1 + np.exp(-logits.astype(np.float64)))
    terms = -(labels * np.log(sig) + (1 - labels) * np.log(1 - sig))
    np.testing.assert_allclose(losses.sigmoid_bce_loss(logits, labels), terms.mean(-1), rtol=1e-6)
    w = np.array([3.0, 3.0, 2.0], np.float32)
    weighted = -(w * labels * np.log(sig) + (1 - labels) * np.log(1 - sig))
    np.testing.assert_allclose(losses.sigmoid_bce_loss(logits, labels, w), weighted.mean(-1), rtol=1e-6)
    # Stable for huge logits: no inf/nan.
    big = np.array([[1e4, -1e4]], np.float32)
    assert np.isfinite(np.asarray(losses.sigmoid_bce_loss(big, np.array([[0.0, 1.0]]), np.ones(2)))).all()
