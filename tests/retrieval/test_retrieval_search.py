"""Retrieval kernels, pairings and the targets files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctxray.data.ids import ct_id
from ctxray.retrieval.quality import label_agreement
from ctxray.retrieval.search import exact_topk, faiss_topk, jaccard_matrix, label_oracle_pairs, random_pairs
from ctxray.retrieval.stage import read_ct_reports
from ctxray.retrieval.targets import load_targets, write_pairs_csv, write_targets


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("block_elems", [7, 64, 1 << 25])
def test_exact_topk_equals_brute_force(block_elems):
    q, g = _unit(37, 16, 0), _unit(211, 16, 1)
    scores, idx = exact_topk(q, g, 9, block_elems=block_elems)
    ref = np.argsort(-(q @ g.T).numpy(), axis=1, kind="stable")[:, :9]
    assert np.array_equal(idx.numpy(), ref)
    assert torch.allclose(scores, (q @ g.T).gather(1, idx), atol=1e-6)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first


def test_exact_topk_k_larger_than_gallery_and_dim_check():
    q, g = _unit(3, 8, 2), _unit(4, 8, 3)
    s, i = exact_topk(q, g, 10, block_elems=5)
    assert i.shape == (3, 4) and sorted(i[0].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="dimension"):
        exact_topk(q, _unit(4, 9, 3), 2)


FAISS_RECALL_BOUNDS = {"ivf": 0.7, "hnsw": 0.9}
"""Stated bounds of recall@10 against exact search on 8,000 random unit vectors in 64-d (300 queries), with
the defaults: IVF-Flat nlist = 4 sqrt(N), nprobe = nlist / 4; HNSW M = 32, efSearch = 128. Random vectors
have no cluster structure, the hard case for both (measured here: IVF 0.77, HNSW 0.996)."""


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_faiss_recall_at_k_above_stated_bound(kind):
    q, g = _unit(300, 64, 4), _unit(8000, 64, 5)
    _, exact = exact_topk(q, g, 10)
    scores, approx = faiss_topk(q, g, 10, kind=kind)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.tolist(), approx.tolist())])
    assert recall > FAISS_RECALL_BOUNDS[kind], recall
    assert torch.allclose(scores, (q @ g.T).gather(1, approx), atol=1e-5)  # scores are true inner products


def test_random_and_oracle_pairings():
    idx = random_pairs(50, 30, 5, seed=1)
    assert idx.shape == (50, 5) and all(len(set(r)) == 5 for r in idx.tolist())
    assert torch.equal(idx, random_pairs(50, 30, 5, seed=1))
    assert torch.equal(idx[:, :1], random_pairs(50, 30, 1, seed=1))  # top-1 the same whatever k
    ct = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=np.float32)
    gal = np.array([[0, 0, 0], [1, 0, 1], [1, 1, 1], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    scores, oi = label_oracle_pairs(ct, gal, 2, seed=0)
    assert oi[0, 0] == 1 and oi[2, 0] == 3 and set(oi[1].tolist()) == {0, 4}
    assert torch.allclose(scores[:, 0], torch.ones(3))
    jac = jaccard_matrix(ct, gal)
    assert jac[0, 2] == pytest.approx(2 / 3) and jac[1, 0] == 1.0 and jac[1, 1] == 0.0
    agree = label_agreement(ct, gal, np.array([1, 2, 2]), columns=[0, 1, 2])
    assert agree["exact"] == pytest.approx(1 / 3) and agree["jaccard"] == pytest.approx((1 + 0 + 1 / 3) / 3)


def test_targets_round_trip_and_lookup(tmp_path):
    gallery = _unit(6, 8, 6)
    ct_text = _unit(3, 8, 7)
    idx = torch.tensor([[2, 0], [5, 5], [1, 3]])
    ids = ["train_1_a_1", "train_2_a_1", "valid_1_a_1"]
    write_targets(tmp_path, ids, idx, gallery, ct_text, {"teacher": "abc", "pairing": "text"})
    write_pairs_csv(tmp_path / "pairs.csv", ids, [f"x{i}" for i in range(6)], idx, torch.ones(3, 2))
    t = load_targets(tmp_path)
    assert t.k == 2 and t.dim == 8 and t.teacher == "abc"
    assert torch.allclose(t.lookup(["valid_1_a_1.nii.gz", "train_1_a_1"]), gallery[[1, 2]])
    mean = F.normalize(gallery[2] + gallery[0], dim=-1)
    assert torch.allclose(t.lookup(["train_1_a_1"], "topk_mean")[0], mean, atol=1e-6)
    assert torch.allclose(t.lookup(["train_2_a_1"], "topk_mean")[0], gallery[5], atol=1e-6)
    assert torch.allclose(t.lookup(ids, "ct_text"), ct_text)
    with pytest.raises(KeyError, match="train_9_a_1"):
        t.lookup(["train_9_a_1"])
    rows = (tmp_path / "pairs.csv").read_text().splitlines()
    assert rows[0] == "ct_id,rank,xray_id,score" and rows[1].startswith("train_1_a_1,1,x2,")
    assert len(rows) == 1 + 3 * 2


def test_read_ct_reports_from_manifest(tmp_path):
    lines = [{"id": "a", "report": "No effusion.", "labels": [0.0] * 18},
             {"id": "b.nii.gz", "report": "Cardiomegaly.", "labels": [1.0] * 18}]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ct = read_ct_reports(tmp_path)
    assert ct.ids == ["a", "b"] and ct.reports[1] == "Cardiomegaly." and ct.labels.shape == (2, 18)
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"report": "x"}) + "\n")
    with pytest.raises(ValueError, match="manifest.jsonl:1"):
        read_ct_reports(tmp_path)
    assert ct_id("train_1_a_1.nii.gz") == "train_1_a_1"
