"""Bootstrap intervals: contain the estimate, shrink with n, repeat with a seed, resample clusters."""

from __future__ import annotations

import numpy as np
import pytest

from ctxray.evaluate.bootstrap import bootstrap_ci, cluster_rows
from ctxray.metrics import auroc_per_label


def _auroc_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.4).astype(float)
    s = y * 1.0 + rng.normal(size=(n, 2))
    return y, s


@pytest.mark.parametrize("n", [60, 240, 960])
def test_ci_contains_point_estimate(n):
    y, s = _auroc_data(n)
    point = auroc_per_label(y, s)
    ci = bootstrap_ci(lambda idx: {"auroc": auroc_per_label(y[idx], s[idx])}, n, n_boot=300, seed=1)["auroc"]
    assert ci.shape == (2, 2)
    assert ((ci[:, 0] <= point) & (point <= ci[:, 1])).all()
    assert (ci[:, 0] < ci[:, 1]).all()


def test_ci_shrinks_with_n():
    widths = []
    for n in (50, 200, 800):
        y, s = _auroc_data(n, seed=3)
        ci = bootstrap_ci(lambda idx, y=y, s=s: {"a": auroc_per_label(y[idx], s[idx])}, n, n_boot=300, seed=0)["a"]
        widths.append(float(np.mean(ci[:, 1] - ci[:, 0])))
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.6 * widths[0]  # ~1/sqrt(n): a 16x larger n should about quarter the width


def test_mean_ci_matches_normal_theory():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    lo, hi = bootstrap_ci(lambda idx: {"m": x[idx].mean()}, len(x), n_boot=2000, seed=0)["m"]
    se = x.std() / np.sqrt(len(x))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_seeded_and_nan_tolerant():
    y, s = _auroc_data(30)
    y[:, 1] = 0.0
    y[0, 1] = 1.0  # one positive: many replicates miss it and give NaN AUROC
    f = lambda idx: {"a": auroc_per_label(y[idx], s[idx])}  # noqa: E731
    a = bootstrap_ci(f, 30, n_boot=100, seed=5)["a"]
    b = bootstrap_ci(f, 30, n_boot=100, seed=5)["a"]
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all()  # NaN replicates are dropped, not propagated


def test_cluster_rows_and_cluster_bootstrap_is_wider_for_duplicated_rows():
    groups = cluster_rows(np.array(["b", "a", "b", "c"]), 4)
    assert [g.tolist() for g in groups] == [[0, 2], [1], [3]]
    with pytest.raises(ValueError, match="shape"):
        cluster_rows(np.array(["a"]), 2)
    # 100 scans, each reconstructed 3 times (identical values): resampling rows pretends n=300
    rng = np.random.default_rng(0)
    x = np.repeat(rng.normal(size=100), 3)
    clusters = np.repeat(np.arange(100), 3).astype(str)
    naive = np.diff(bootstrap_ci(lambda i: {"m": x[i].mean()}, 300, n_boot=1000, seed=0)["m"])[0]
    by_scan = np.diff(bootstrap_ci(lambda i: {"m": x[i].mean()}, 300, n_boot=1000, seed=0, clusters=clusters)["m"])[0]
    assert by_scan == pytest.approx(naive * np.sqrt(3), rel=0.15)
