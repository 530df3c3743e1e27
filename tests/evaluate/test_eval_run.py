"""The evaluate pipeline on a toy model: embeddings, metrics.json schema, CSVs and plots."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from ctxray.evaluate.run import embed_dataset, evaluate_embeddings, select_labels, write_outputs
from ctxray.labels import CT_RATE_LABELS


def _toy_items(toy_helpers, n_scans: int = 12, recons: int = 2, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for s in range(n_scans):
        y = (rng.random(18) < 0.35).astype(np.float32)
        if s in (0, n_scans - 1):  # an all-normal and an all-abnormal scan: both classes in every label
            y[:] = float(s > 0)
        for r in range(recons):
            items.append({"id": f"valid_{s}_a_{r + 1}", "volume": toy_helpers.volume(y),
                          "report": toy_helpers.report_for(y), "labels": torch.from_numpy(y.copy()),
                          "index": len(items)})
    return items


@pytest.fixture
def embedded(label_set, toy_model, toy_helpers):
    model, tok = toy_model
    items = _toy_items(toy_helpers)
    scan_of = {it["id"]: it["id"].rsplit("_", 1)[0] for it in items}
    return embed_dataset(model, tok, items, scan_of, batch_size=5), items


def test_embed_dataset_keeps_order_and_scans(embedded, toy_model):
    emb, items = embedded
    assert emb.ids == [it["id"] for it in items]
    assert emb.scan_ids[0] == emb.scan_ids[1] == "valid_0_a"
    assert emb.volume.shape == emb.text.shape == (len(items), toy_model[0].dim)
    np.testing.assert_array_equal(emb.labels, np.stack([it["labels"].numpy() for it in items]))


def test_perfect_toy_gives_perfect_metrics_and_schema(embedded, label_set, toy_model, tmp_path):
    model, tok = toy_model
    emb, _ = embedded
    metrics, y, probs = evaluate_embeddings(model, tok, emb, label_set, n_boot=50)
    zs = metrics["zero_shot"]
    for m in ("auroc", "f1", "accuracy", "precision", "recall"):
        assert zs["macro"][m] == 1.0 and zs["per_scan"]["macro"][m] == 1.0
    assert zs["n_labels_evaluated"] == 18 and zs["n_scans"] == 12
    v2r = metrics["retrieval"]["volume_to_report"]
    # two reconstructions share a report: the true report ties with its twin, so R@1 is 1/2, R@5 is 1
    assert v2r["R@1"] == pytest.approx(0.5) and v2r["R@5"] == 1.0
    write_outputs(tmp_path, metrics, emb, y, probs, label_set.names)
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert set(data["zero_shot"]["macro"]) == {"auroc", "f1", "accuracy", "precision", "recall"}
    assert set(data["retrieval"]) == {"volume_to_report", "report_to_volume"}
    assert {"R@1", "R@5", "R@10", "median_rank", "R@1_ci95"} <= set(data["retrieval"]["report_to_volume"])
    assert data["zero_shot"]["per_label"]["Cardiomegaly"]["auroc_ci95"] == [1.0, 1.0]
    rows = list(csv.DictReader(open(tmp_path / "per_label.csv")))
    assert len(rows) == 2 * 19 and {r["protocol"] for r in rows} == {"per_volume", "per_scan"}
    scores = list(csv.DictReader(open(tmp_path / "scores.csv")))
    assert len(scores) == 24 and scores[0]["scan_id"] == "valid_0_a"
    for png in ("roc_per_volume.png", "roc_per_scan.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_shuffled_volumes_score_chance(embedded, label_set, toy_model):
    """Scoring against labels of other volumes must fall to about chance: catches row misalignment."""
    model, tok = toy_model
    emb, _ = embedded
    perm = np.random.default_rng(0).permutation(len(emb.ids))
    emb.labels = emb.labels[perm]
    metrics, _, _ = evaluate_embeddings(model, tok, emb, label_set, n_boot=0)
    assert 0.3 < metrics["zero_shot"]["macro"]["auroc"] < 0.7


def test_select_labels_and_subset(label_set):
    y = np.arange(2 * 18, dtype=float).reshape(2, 18)
    from ctxray.labels import LabelSet

    sub = LabelSet(tuple(label_set.labels[j] for j in (5, 2)), label_set.positive_templates,
                   label_set.negative_templates, "subset")
    np.testing.assert_array_equal(select_labels(y, sub), y[:, [5, 2]])
    assert CT_RATE_LABELS[5] == sub.names[0]


def test_roc_plot_skips_single_class_labels(tmp_path):
    from ctxray.evaluate.report import plot_roc

    y = np.zeros((6, 2))
    assert plot_roc(tmp_path / "none.png", y, np.random.default_rng(0).random((6, 2)), ["A", "B"], "t") is None
    assert not (tmp_path / "none.png").exists()
    y[:3, 1] = 1
    assert plot_roc(tmp_path / "one.png", y, np.random.default_rng(0).random((6, 2)), ["A", "B"], "t").is_file()


class _SideModel(torch.nn.Module):
    """Text embeds to how often it says left / right (or to a constant: a side-blind report tower)."""

    def __init__(self, blind: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.blind = blind
        self.texts: list[str] = []

    def tokenize(self, texts, max_length):
        ids = []
        for t in texts:
            self.texts.append(t)
            ids.append([len(self.texts) - 1])
        ids = torch.tensor(ids)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def encode_text(self, input_ids, attention_mask):
        rows = []
        for i in input_ids[:, 0].tolist():
            words = self.texts[i].lower().split()
            rows.append([1.0, 0.0, 0.0] if self.blind else [1.0, words.count("left"), words.count("right")])
        return torch.nn.functional.normalize(torch.tensor(rows), dim=-1)


def test_side_test_scores_volumes_against_their_side_swapped_reports():
    from ctxray.evaluate.run import SplitEmbeddings, side_test

    reports = ["nodule in the left lung", "effusion on the right", "no findings", "right and right and left"]
    seeing, blind = _SideModel(), _SideModel(blind=True)
    own = seeing.encode_text(seeing.tokenize(reports, 8)["input_ids"], None)
    emb = SplitEmbeddings([f"v{i}" for i in range(4)], [f"v{i}" for i in range(4)], own.clone(), own.clone(),
                          np.zeros((4, 18)), reports)
    result = side_test(seeing, seeing.tokenize, emb)
    assert result["n"] == 3 and result["accuracy"] == 1.0  # "no findings" names no side
    assert result["ci95"][0] < 1.0 == pytest.approx(result["ci95"][1]) and result["mean_margin"] > 0
    assert result["text_cos_swapped"] < 0.9
    mirrored = SplitEmbeddings(emb.ids, emb.scan_ids, own[:, [0, 2, 1]], own, emb.labels, reports)  # sides wrong
    assert side_test(seeing, seeing.tokenize, mirrored)["accuracy"] == 0.0
    blind_text = blind.encode_text(blind.tokenize(reports, 8)["input_ids"], None)
    tied = side_test(blind, blind.tokenize, SplitEmbeddings(emb.ids, emb.scan_ids, own, blind_text, emb.labels,
                                                            reports))
    assert tied["accuracy"] == 0.5 and tied["text_cos_swapped"] == pytest.approx(1.0)  # every volume ties
    none = side_test(seeing, seeing.tokenize, SplitEmbeddings(["a"], ["a"], own[:1], own[:1], np.zeros((1, 18)),
                                                              ["normal"]))
    assert none["n"] == 0 and np.isnan(none["accuracy"])
