"""Per-scan grouping, thresholds from another split, and the metric blocks."""

from __future__ import annotations

import numpy as np
import pytest

from ctxray.evaluate.protocol import aggregate_by_scan, metric_block, zero_shot_protocols
from ctxray.metrics import auroc_per_label


def test_aggregate_by_scan_takes_max_in_first_appearance_order():
    scans = ["s2", "s1", "s2", "s3", "s1"]
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 1], [0, 0]], float)
    s = np.array([[0.2, 0.1], [0.5, 0.3], [0.9, 0.0], [0.1, 0.8], [0.4, 0.6]])
    names, ys, ss = aggregate_by_scan(scans, y, s)
    assert names == ["s2", "s1", "s3"]
    np.testing.assert_array_equal(ys, [[1, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(ss, [[0.9, 0.1], [0.5, 0.6], [0.1, 0.8]])


def test_aggregate_by_scan_any_positive_and_unknown(caplog):
    y = np.array([[np.nan, 0], [1, np.nan], [np.nan, np.nan]], float)
    with caplog.at_level("WARNING"):
        _, ys, _ = aggregate_by_scan(["a", "a", "b"], y, np.zeros((3, 2)))
    np.testing.assert_array_equal(ys[0], [1, 0])
    assert np.isnan(ys[1]).all()
    assert "different labels" not in caplog.text  # unknown entries are not disagreements
    with caplog.at_level("WARNING"):
        aggregate_by_scan(["a", "a"], np.array([[1.0], [0.0]]), np.zeros((2, 1)))
    assert "1 scan-label pairs have reconstructions with different labels" in caplog.text
    with pytest.raises(ValueError, match="scan ids"):
        aggregate_by_scan(["a"], y, np.zeros((3, 2)))


def test_per_scan_differs_from_per_volume_when_reconstructions_disagree():
    rng = np.random.default_rng(0)
    n_scan = 40
    y_scan = (rng.random((n_scan, 1)) < 0.5).astype(float)
    y_scan[:2, 0] = [0, 1]
    scans = np.repeat([f"s{i}" for i in range(n_scan)], 2)
    y = np.repeat(y_scan, 2, axis=0)
    s = y + rng.normal(scale=0.8, size=y.shape)
    out = zero_shot_protocols(y, s, list(scans), ["A"], n_boot=50)
    assert out["n"] == 80 and out["per_scan"]["n"] == n_scan
    _, _, s_scan = aggregate_by_scan(list(scans), y, s)
    assert out["per_scan"]["macro"]["auroc"] == pytest.approx(auroc_per_label(y_scan, s_scan)[0])
    assert out["macro"]["auroc"] == pytest.approx(auroc_per_label(y, s)[0])
    assert out["per_scan"]["macro"]["auroc"] != pytest.approx(out["macro"]["auroc"])


def test_thresholds_come_from_the_threshold_split():
    y = np.array([[0], [0], [1], [1]], float)
    s = np.array([[0.1], [0.2], [0.3], [0.4]])
    thr_y = np.array([[0], [1]], float)
    thr_s = np.array([[0.05], [0.15]])  # Youden threshold there: 0.15
    out = zero_shot_protocols(y, s, ["a", "b", "c", "d"], ["A"], thr_y=thr_y, thr_scores=thr_s,
                              thr_scan_ids=["x", "y"], n_boot=0)
    assert out["thresholds"]["same_split"] is False
    assert out["thresholds"]["per_volume"]["A"] == pytest.approx(0.15)
    # 0.15 calls three of four volumes positive: precision 2/3, recall 1
    assert out["per_label"]["A"]["precision"] == pytest.approx(2 / 3)
    assert out["per_label"]["A"]["recall"] == 1.0
    same = zero_shot_protocols(y, s, ["a", "b", "c", "d"], ["A"], n_boot=0)
    assert same["thresholds"]["same_split"] is True and same["per_label"]["A"]["f1"] == 1.0
    assert "optimistic" in same["thresholds"]["note"]


def test_metric_block_schema_and_undefined_labels():
    rng = np.random.default_rng(1)
    y = (rng.random((50, 3)) < 0.4).astype(float)
    y[:, 2] = np.nan  # unknown label (e.g. unmapped on RAD-ChestCT)
    s = rng.random((50, 3))
    b = metric_block(y, s, np.full(3, 0.5), ["A", "B", "C"], n_boot=50)
    assert set(b["macro"]) == {"auroc", "f1", "accuracy", "precision", "recall"}
    assert np.isnan(b["per_label"]["C"]["auroc"]) and b["per_label"]["C"]["n"] == 0
    assert b["macro"]["auroc"] == pytest.approx(np.mean([b["per_label"][k]["auroc"] for k in "AB"]))
    lo, hi = b["macro_ci95"]["auroc"]
    assert lo <= b["macro"]["auroc"] <= hi
