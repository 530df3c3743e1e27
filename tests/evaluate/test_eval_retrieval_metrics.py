"""Retrieval recall and ranks: brute force agreement, ties, collapsed embeddings, both directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctxray.evaluate.retrieval_metrics import bidirectional_retrieval, retrieval_with_ci
from ctxray.metrics import retrieval_metrics, tie_aware_ranks


def test_ranks_match_argsort_without_ties():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(30, 30))
    greater, ties = tie_aware_ranks(sim)
    assert (ties == 0).all()
    brute = np.array([int(np.where(np.argsort(-sim[i]) == i)[0][0]) + 1 for i in range(30)])
    np.testing.assert_array_equal(greater + 1, brute)
    m = retrieval_metrics(sim)
    for k in (1, 5, 10):
        assert m[f"R@{k}"] == pytest.approx(np.mean(brute <= k))
    assert m["median_rank"] == np.median(brute)


def test_identity_is_perfect_and_collapse_is_chance():
    e = F.normalize(torch.randn(20, 8), dim=-1)
    m = bidirectional_retrieval(e, e)
    assert m["volume_to_report"]["R@1"] == 1.0 and m["report_to_volume"]["median_rank"] == 1.0
    same = F.normalize(torch.ones(20, 8), dim=-1)
    c = bidirectional_retrieval(same, same)["volume_to_report"]
    assert c["R@1"] == pytest.approx(1 / 20) and c["R@10"] == pytest.approx(10 / 20)
    assert c["median_rank"] == pytest.approx(10.5)


def test_duplicate_reports_share_the_credit():
    # volumes 0 and 1 have the same report text (identical embedding): each finds its report at rank 1 or 2
    v = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=-1)
    m = retrieval_metrics(v @ v.T)
    assert m["R@1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert m["R@5"] == 1.0


def test_directions_differ_for_asymmetric_similarity():
    v = torch.eye(3)
    t = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    m = bidirectional_retrieval(v, t)
    assert m["volume_to_report"]["R@1"] == pytest.approx(1.0)  # volume 1 still prefers report 1 (cos .11 vs 0)
    assert m["report_to_volume"]["R@1"] == pytest.approx(2 / 3)  # report 1 is closest to volume 0


def test_ci_brackets_estimate():
    torch.manual_seed(0)
    v = F.normalize(torch.randn(60, 16), dim=-1)
    t = F.normalize(v + 0.9 * torch.randn(60, 16), dim=-1)
    m = retrieval_with_ci(v, t, n_boot=200, seed=0)
    for d in ("volume_to_report", "report_to_volume"):
        lo, hi = m[d]["R@5_ci95"]
        assert lo <= m[d]["R@5"] <= hi and lo < hi
        assert m[d]["median_rank_ci95"][0] <= m[d]["median_rank"] <= m[d]["median_rank_ci95"][1]


def test_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        tie_aware_ranks(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="differ"):
        bidirectional_retrieval(torch.zeros(2, 3), torch.zeros(3, 3))
