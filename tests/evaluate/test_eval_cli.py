"""``ctxray evaluate`` and ``ctxray finetune`` end to end on a real (random-weight) tiny checkpoint and cache."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ctxray.cli import main

REPORTS = [
    "There is a lung nodule in the right upper lobe. No pleural effusion.",
    "The chest CT shows no lung nodule. Heart size is normal. No pericardial effusion.",
    "Findings are consistent with emphysema and atelectasis. No consolidation.",
    "Cardiomegaly with pericardial effusion. Coronary artery wall calcification.",
]


def _write_cache(root: Path, n_scans: int = 4, recons: int = 2) -> Path:
    from ctxray.data.spec import get_preset

    cache = root / "cache"
    (cache / "volumes").mkdir(parents=True)
    spec = get_preset("tiny")
    spec.save(cache / "spec.json")
    rng = np.random.default_rng(0)
    lines = []
    for split in ("train", "valid"):
        for s in range(n_scans):
            labels = (rng.random(18) < 0.5).astype(int)
            if s in (0, 1):  # scan 0 all normal, scan 1 all abnormal: both classes in every label
                labels[:] = s
            for r in range(recons):
                vid = f"{split}_{s}_a_{r + 1}"
                np.save(cache / "volumes" / f"{vid}.npy", rng.random(spec.shape_zyx).astype(np.float16))
                lines.append(json.dumps({"id": vid, "split": split, "file": f"volumes/{vid}.npy",
                                         "scan_id": f"{split}_{s}_a", "report": REPORTS[s % 4],
                                         "labels": labels.tolist(), "shape": list(spec.shape_zyx)}))
    (cache / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return cache


def _write_run(root: Path) -> Path:
    import torch

    from ctxray.labels import load_labels
    from ctxray.models.dual import DualEncoder, DualEncoderConfig
    from ctxray.models.text import TextEncoderConfig, Tokenizer
    from ctxray.train.checkpoint import save_checkpoint
    from ctxray.train.config import DataConfig, TrainConfig

    labels = load_labels()
    prompts = [p for n in labels.names for side in labels.prompts(n) for p in side]
    tok = Tokenizer.train(REPORTS + prompts, vocab_size=400, min_frequency=1)
    text = TextEncoderConfig(hidden=32, layers=1, heads=2, max_length=48, vocab_size=tok.vocab_size)
    cfg = TrainConfig(model=DualEncoderConfig(encoder="vit3d_tiny", input_shape=(16, 32, 32), embed_dim=32,
                                              text=text), data=DataConfig(cache=str(root / "cache")))
    torch.manual_seed(0)
    run = root / "run"
    save_checkpoint(run / "checkpoints" / "best", DualEncoder(cfg.model).eval(), tok, cfg, metrics={})
    return run


@pytest.fixture(scope="module")
def run_and_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    return _write_run(root), _write_cache(root)


def test_evaluate_command_writes_the_documented_outputs(run_and_cache, tmp_path):
    run, cache = run_and_cache
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run), "--cache", str(cache), "--split", "valid", "--out", str(out),
                 "--bootstrap", "20", "--threshold-split", "train"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    zs = m["zero_shot"]
    assert zs["n"] == 8 and zs["n_scans"] == 4 and zs["per_scan"]["n"] == 4
    assert zs["thresholds"]["same_split"] is False and zs["thresholds"]["split"] == "train"
    assert 0.0 <= zs["macro"]["auroc"] <= 1.0 and len(zs["per_label"]) == 18
    for d in ("volume_to_report", "report_to_volume"):
        assert {"R@1", "R@5", "R@10", "median_rank"} <= set(m["retrieval"][d])
        assert m["retrieval"][d]["n"] == 8
    assert m["meta"]["n_volumes"] == 8 and m["meta"]["logit_scale"] == pytest.approx(1 / 0.07, rel=1e-4)
    best = run / "checkpoints" / "best"  # which weights were measured, so export can refuse others
    assert m["meta"]["checkpoint_resolved"] == str(best.resolve())
    assert m["meta"]["weights_sha256"] == hashlib.sha256((best / "model.safetensors").read_bytes()).hexdigest()
    rows = list(csv.DictReader(open(out / "per_label.csv")))
    assert [r["label"] for r in rows[:2]] == ["Medical material", "Arterial wall calcification"]
    ids = [r["id"] for r in csv.DictReader(open(out / "scores.csv"))]
    assert ids == [f"valid_{s}_a_{r}" for s in range(4) for r in (1, 2)]
    assert (out / "roc_per_volume.png").stat().st_size > 1000


def test_finetune_command_probe_and_full(run_and_cache, tmp_path):
    run, cache = run_and_cache
    out = tmp_path / "ft"
    assert main(["finetune", "--checkpoint", str(run), "--cache", str(cache), "--out", str(out), "--mode", "probe",
                 "--fractions", "0.5,1.0", "--bootstrap", "0", "--probe-steps", "20"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["fractions"]) == {"0.5", "1"} and m["fractions"]["0.5"]["n_train"] == 4
    assert {"pretrained", "scratch"} <= set(m["fractions"]["1"])
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 4
    out2 = tmp_path / "ft_full"
    assert main(["finetune", "--checkpoint", str(run), "--cache", str(cache), "--out", str(out2), "--mode", "full",
                 "--fractions", "1.0", "--epochs", "1", "--bootstrap", "0", "--no-scratch"]) == 0
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert set(m2["fractions"]["1"]) == {"n_train", "pretrained"}


def test_finetune_rejects_bad_fractions(run_and_cache, tmp_path):
    run, cache = run_and_cache
    with pytest.raises(SystemExit):
        main(["finetune", "--checkpoint", str(run), "--cache", str(cache), "--out", str(tmp_path), "--fractions", "2"])
