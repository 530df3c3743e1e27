"""Label-aware re-ranking, X-ray-visible queries and the hubness figure (ctxray.retrieval.rerank)."""

from __future__ import annotations

import numpy as np
import torch

from ctxray.retrieval.rerank import NORMAL_QUERY, hubness, label_rerank, normal_to_abnormal, xray_query


def test_label_rerank_prefers_agreement_then_cosine():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]])
    index = torch.tensor([[3, 1, 0, 2]])
    ct = np.array([[1, 0]])
    gallery = np.array([[1, 0], [1, 0], [0, 1], [1, 1]])  # items 0 and 1 agree exactly, 3 half, 2 not at all
    jac, picked = label_rerank(scores, index, ct, gallery, k=3)
    assert picked.tolist() == [[1, 0, 3]]  # exact matches first, the higher cosine (item 1) ahead
    assert jac[0].tolist() == [1.0, 1.0, 0.5]


def test_label_rerank_breaks_exact_ties_at_random_so_identical_reports_do_not_form_a_hub():
    n = 200
    index = torch.arange(10).repeat(n, 1)  # 10 identical normal reports, equal cosine for every CT
    scores = torch.full((n, 10), 0.5)
    _, picked = label_rerank(scores, index, np.zeros((n, 3)), np.zeros((10, 3)), k=1, seed=0)
    assert hubness(picked, 10)["max_ct_per_xray"] < 0.2 * n  # ~n/10 each, not all on one
    _, again = label_rerank(scores, index, np.zeros((n, 3)), np.zeros((10, 3)), k=1, seed=0)
    assert torch.equal(picked, again)  # seeded


def test_hubness_and_normal_to_abnormal():
    idx = np.array([[0], [0], [0], [2]])
    h = hubness(idx, 5)
    assert h == {"max_ct_per_xray": 3, "max_share": 0.75, "distinct_top1": 2, "n_gallery": 5}
    ct = np.array([[0, 0], [0, 0], [1, 0], [0, 0]])
    gal = np.array([[1, 0], [0, 0], [0, 0]])
    assert normal_to_abnormal(ct, gal, idx, [0, 1]) == 2 / 3  # normal CTs 0, 1 -> abnormal X-ray 0; 3 -> normal


def test_xray_query_keeps_stated_visible_findings_and_drops_negations_and_ct_only_ones():
    report = ("No pleural effusion. Calcified plaques are seen in the coronary arteries. "
              "There is cardiomegaly. A 14 mm nodule is seen in the right upper lobe.")
    q = xray_query(report).lower()
    assert "cardiomegaly" in q and "nodule" in q
    assert "effusion" not in q and "coronary" not in q
    assert xray_query("Heart size normal. No pleural effusion. No nodule.") == NORMAL_QUERY
