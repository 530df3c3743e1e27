"""End to end on the tiny synthetic world: train the built-in teacher, retrieve, check the files and
that text retrieval agrees with the CT's X-ray-visible labels more often than random pairing (Jaccard)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from ctxray.cli import main
from ctxray.retrieval import load_targets, read_ct_reports


@pytest.fixture(scope="module")
def teacher_dir(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["teacher", "train", "--world", str(tiny_world), "--out", str(out), "--preset", "tiny"]) == 0
    return out


def test_teacher_folder_and_metrics(teacher_dir):
    for name in ("model.safetensors", "config.json", "metrics.json", "tokenizer/tokenizer.json"):
        assert (teacher_dir / name).is_file(), name
    metrics = json.loads((teacher_dir / "metrics.json").read_text())
    assert set(metrics["report_to_image"]) == {"instance", "same_report", "chance"}
    assert set(metrics["report_to_image"]["instance"]) == {"R@1", "R@5", "R@10"}
    assert "macro" in metrics["zero_shot_auc"] and metrics["n"] > 0
    losses = metrics["train"]["loss"]
    assert losses[-1] < losses[0]  # CLIP training made progress


@pytest.mark.parametrize("pairing", ["text", "random", "label_oracle"])
def test_retrieve_outputs(teacher_dir, tiny_world, tmp_path, pairing):
    out = tmp_path / pairing
    args = ["retrieve", "--teacher", str(teacher_dir), "--ct", str(tiny_world / "ct-rate"), "--gallery",
            str(tiny_world / "xray"), "--out", str(out), "--k", "3", "--pairing", pairing,
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    ct = read_ct_reports(tiny_world / "ct-rate")
    rows = list(csv.DictReader(open(out / "pairs.csv")))
    assert len(rows) == 3 * len(ct.ids)
    assert [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    targets = load_targets(out)
    assert targets.ct_ids == ct.ids and targets.meta["pairing"] == pairing
    top1 = targets.lookup(ct.ids[:4])
    assert top1.shape == (4, targets.dim)
    assert torch.allclose(top1.norm(dim=1), torch.ones(4), atol=1e-5)
    if pairing == "text":  # scores are sorted, best first
        scores = [float(r["score"]) for r in rows[:3]]
        assert scores == sorted(scores, reverse=True)


def test_text_retrieval_beats_random_pairing(teacher_dir, tiny_world, tmp_path):
    out = tmp_path / "r"
    assert main(["retrieve", "--teacher", str(teacher_dir), "--ct", str(tiny_world / "ct-rate"),
                 "--gallery", str(tiny_world / "xray"), "--out", str(out)]) == 0
    q = json.loads((out / "quality.json").read_text())["agreement_top1"]
    # measured on world seed 0 (220 CTs, 80 X-rays; tiny preset, locked MiniLM text tower, projection
    # trained on 64 radiographs): label Jaccard text 0.230, random 0.197, oracle 0.908. Exact label-set
    # match is WORSE than random here (0.050 vs 0.109): with 80 radiographs and a weak teacher, a few
    # reports that list many findings are the nearest for most CTs (hubness; CSLS re-scoring and
    # impression-only queries did not fix it: 0.06-0.08 and 0.04 exact). With the demo world's 3,000
    # radiographs text retrieval wins on both (0.284 vs 0.122 exact; README). So only Jaccard is asserted.
    # (The earlier 36-CT tiny world gave 0.11 vs 0.03 exact: too few CTs to tell.)
    assert q["text"]["jaccard"] > q["random"]["jaccard"] + 0.02
    assert q["label_oracle"]["jaccard"] >= q["text"]["jaccard"]
