"""Metrics against scikit-learn on fixed inputs, and their edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score, roc_curve

from ctxray.metrics import (
    auroc_per_label,
    binary_metrics,
    macro,
    roc_points,
    youden_thresholds,
)


@pytest.fixture
def fixed():
    rng = np.random.default_rng(7)
    n, L = 200, 5
    y = (rng.random((n, L)) < [0.1, 0.3, 0.5, 0.7, 0.05]).astype(float)
    # informative scores with many exact ties (rounded), different strength per label
    scores = np.round(y * np.array([0.5, 1.0, 0.2, 2.0, 0.0]) + rng.normal(size=(n, L)), 1)
    return y, scores


def test_auroc_matches_sklearn_with_ties(fixed):
    y, s = fixed
    ours = auroc_per_label(y, s)
    ref = [roc_auc_score(y[:, j], s[:, j]) for j in range(y.shape[1])]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_auroc_nan_for_single_class_and_ignores_unknown(fixed):
    y, s = fixed
    y = y.copy()
    y[:, 0] = 0.0  # one class only
    y[:20, 1] = np.nan  # unknown entries are dropped, not counted as negatives
    out = auroc_per_label(y, s)
    assert np.isnan(out[0])
    assert out[1] == pytest.approx(roc_auc_score(y[20:, 1], s[20:, 1]), abs=1e-12)
    assert not np.isnan(out[2:]).any()


def test_auroc_perfect_inverted_and_constant():
    y = np.array([[0], [0], [1], [1]], float)
    assert auroc_per_label(y, np.array([[0.1], [0.2], [0.8], [0.9]]))[0] == 1.0
    assert auroc_per_label(y, -np.array([[0.1], [0.2], [0.8], [0.9]]))[0] == 0.0
    assert auroc_per_label(y, np.zeros((4, 1)))[0] == 0.5


def test_roc_points_match_sklearn(fixed):
    y, s = fixed
    fpr, tpr, thr = roc_points(y[:, 1], s[:, 1])
    rfpr, rtpr, rthr = roc_curve(y[:, 1], s[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(fpr, rfpr)
    np.testing.assert_allclose(tpr, rtpr)
    np.testing.assert_allclose(thr[1:], rthr[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y[:, 1], s[:, 1]))


def test_youden_threshold_maximises_j(fixed):
    y, s = fixed
    thr = youden_thresholds(y, s)
    for j in range(y.shape[1]):
        fpr, tpr, cand = roc_curve(y[:, j], s[:, j], drop_intermediate=False)
        best = np.max(tpr - fpr)
        pred = s[:, j] >= thr[j]
        j_ours = pred[y[:, j] == 1].mean() - pred[y[:, j] == 0].mean()
        assert j_ours == pytest.approx(best, abs=1e-12)


def test_youden_separable_threshold_separates():
    y = np.array([[0], [0], [0], [1], [1]], float)
    s = np.array([[0.1], [0.3], [0.35], [0.6], [0.9]])
    t = youden_thresholds(y, s)[0]
    assert 0.35 < t <= 0.6
    m = binary_metrics(y, s, np.array([t]))
    assert m["f1"][0] == 1.0 and m["accuracy"][0] == 1.0


def test_youden_single_class_gets_default():
    y = np.zeros((4, 1))
    assert youden_thresholds(y, np.arange(4.0)[:, None], default=0.25)[0] == 0.25


def test_binary_metrics_match_sklearn(fixed):
    y, s = fixed
    thr = np.array([0.0, 0.5, 1.0, 9.0, -9.0])  # includes "never positive" and "always positive"
    ours = binary_metrics(y, s, thr)
    for j in range(y.shape[1]):
        pred = (s[:, j] >= thr[j]).astype(int)
        assert ours["f1"][j] == pytest.approx(f1_score(y[:, j], pred, zero_division=0))
        assert ours["precision"][j] == pytest.approx(precision_score(y[:, j], pred, zero_division=0))
        assert ours["recall"][j] == pytest.approx(recall_score(y[:, j], pred, zero_division=0))
        assert ours["accuracy"][j] == pytest.approx(accuracy_score(y[:, j], pred))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="must both be"):
        auroc_per_label(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        auroc_per_label(np.full((3, 1), 2.0), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN or inf"):
        auroc_per_label(np.zeros((3, 1)), np.full((3, 1), np.nan))


def test_macro_ignores_undefined():
    assert macro(np.array([0.5, np.nan, 1.0])) == 0.75
    assert np.isnan(macro(np.array([np.nan, np.nan])))
