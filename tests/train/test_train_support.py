"""Tiny training data in the stage contracts' formats (a preprocess cache, a retrieval folder), shared by
the training tests (``from .test_train_support import ...``: tests/ is a package), plus checks that the
files fit the readers.

The cache world: each volume (16, 32, 32) holds a bright cube in one of four fixed places per positive
label (labels 0-3 of labels.json only), over noise; its report names each label as present or absent
with the label's own prompt phrase, so volume, report and labels agree exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ctxray.labels import load_labels
from ctxray.train.config import TrainConfig

SHAPE = (16, 32, 32)
ACTIVE = 4  # labels that can be positive
CORNERS = [(2, 2, 2), (2, 18, 18), (8, 2, 18), (8, 18, 2)]  # cube origins, one per active label
DT = 16  # teacher width of the fake targets


def _volume(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    vol = rng.normal(0.3, 0.05, SHAPE).astype(np.float32)
    for j in range(ACTIVE):
        if labels[j]:
            z, y, x = CORNERS[j]
            vol[z:z + 6, y:y + 12, x:x + 12] = 0.9
    return np.clip(vol, 0, 1)


def _report(labels: np.ndarray) -> str:
    names = load_labels()
    parts = []
    for j in range(ACTIVE):
        phrase = names.labels[j].phrases[0]
        parts.append(f"There is {phrase}." if labels[j] else f"No evidence of {phrase}.")
    return " ".join(parts)


def label_patterns(n: int, rng: np.random.Generator, distinct: bool) -> np.ndarray:
    """(n, 18) label vectors; with ``distinct`` the first ``2**ACTIVE`` rows are all different."""
    if distinct:
        if n > 2**ACTIVE:
            raise ValueError("at most 16 distinct patterns")
        codes = rng.permutation(2**ACTIVE)[:n]
    else:
        codes = rng.integers(0, 2**ACTIVE, n)
    y = np.zeros((n, 18), np.float32)
    for j in range(ACTIVE):
        y[:, j] = (codes >> j) & 1
    return y


def write_cache(root: Path, n_train: int, n_valid: int, seed: int = 0, distinct: bool = False) -> Path:
    """A preprocess cache (spec.json, volumes/*.npy, manifest.jsonl) in the documented format."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "volumes").mkdir(exist_ok=True)
    from ctxray.data.spec import PreprocessSpec

    spec = PreprocessSpec("tiny", (4.0, 4.0, 4.0), SHAPE, dtype="float16")
    spec.save(root / "spec.json")
    rows = []
    for split, n in (("train", n_train), ("valid", n_valid)):
        labels = label_patterns(n, rng, distinct and split == "train")
        for i in range(n):
            vid = f"{split}_{i}_a_1"
            vol = _volume(labels[i], rng)
            np.save(root / "volumes" / f"{vid}.npy", spec.encode(vol))
            rows.append({"id": vid, "file": f"volumes/{vid}.npy", "source": "test", "split": split,
                         "shape": list(SHAPE),
                         "spacing": [4.0, 4.0, 4.0], "preset": "tiny", "sha256": "", "report": _report(labels[i]),
                         "labels": labels[i].tolist(), "scan_id": f"{split}_{i}_a"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "errors.log").write_text("")
    return root


def write_targets(root: Path, cache: Path, seed: int = 0) -> Path:
    """A retrieval folder: targets.safetensors (top1, topk_mean, ct_text) + targets.json + pairs.csv.

    Teacher vectors are a fixed random projection of the label vector plus noise, normalised: CTs with
    the same findings get similar targets, as a good X-ray expert would give for the visible ones.
    """
    from safetensors.torch import save_file

    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(18, DT, generator=gen)
    y = torch.tensor([r["labels"] for r in rows])
    base = y @ proj + 0.3 * torch.randn(len(rows), DT, generator=gen)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1).contiguous()

    root.mkdir(parents=True, exist_ok=True)
    save_file({"top1": unit(base), "topk_mean": unit(base + 0.1 * torch.randn(base.shape, generator=gen)),
               "ct_text": unit(y @ proj)}, str(root / "targets.safetensors"))
    (root / "targets.json").write_text(json.dumps({"ct_ids": [r["id"] for r in rows], "teacher": "fake", "k": 1,
                                                   "dim": DT}))
    (root / "pairs.csv").write_text("ct_id,rank,xray_id,score\n" + "".join(f"{r['id']},1,x{i},1.0\n"
                                                                         for i, r in enumerate(rows)))
    return root


def tiny_config(cache: Path, retrieval: Path | None, **overrides) -> TrainConfig:
    """A fast config: tiny ViT, 2-layer 32-wide BERT, no dropout, fp32, no TensorBoard."""
    from ctxray.config import apply_overrides, from_dict, to_dict

    base = {
        "model": {"encoder": "vit3d_tiny", "embed_dim": 32,
                  "text": {"hidden": 32, "layers": 1, "heads": 2, "max_length": 48, "dropout": 0.0}},
        "loss": {"pkd": 1.0 if retrieval else 0.0, "srkd": 1.0 if retrieval else 0.0},
        "optim": {"lr": 2e-3, "epochs": 2, "warmup_steps": 2, "precision": "fp32"},
        "data": {"cache": str(cache), "retrieval": str(retrieval) if retrieval else None, "batch_size": 4},
        "tokenizer_vocab": 200, "tensorboard": False, "device": "cpu", "log_every": 1000,
    }
    merged = apply_overrides(to_dict(from_dict(TrainConfig, base)), [f"{k}={v}" for k, v in overrides.items()])
    return from_dict(TrainConfig, merged)


def test_cache_fits_the_dataset_contract(tmp_path):
    from ctxray.data.dataset import CTCacheDataset


    cache = write_cache(tmp_path / "c", n_train=5, n_valid=3)
    ds = CTCacheDataset(cache, split="train")
    assert len(ds) == 5
    item = ds[2]
    assert tuple(item["volume"].shape) == (1, *SHAPE)
    assert item["report"].startswith(("There is", "No evidence"))
    assert np.asarray(item["labels"]).shape == (18,)


def test_targets_fit_the_retrieval_contract(tmp_path):
    from ctxray.retrieval import load_targets

    cache = write_cache(tmp_path / "c", n_train=5, n_valid=3)
    targets = load_targets(write_targets(tmp_path / "r", cache))
    rows = targets.lookup(["train_1_a_1", "valid_0_a_1"], kind="top1")
    assert tuple(rows.shape) == (2, DT)
    assert torch.allclose(rows.norm(dim=1), torch.ones(2), atol=1e-5)
