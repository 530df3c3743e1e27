"""Helpers for the inference tests: a tiny trained-looking run folder, a chest-like volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPORTS = [
    "There is a lung nodule in the right upper lobe. No pleural effusion.",
    "The chest CT shows no lung nodule. Heart size is normal. No pericardial effusion.",
    "Findings are consistent with emphysema and atelectasis. No consolidation.",
    "Cardiomegaly with pericardial effusion. Coronary artery wall calcification.",
]


def make_run(root: Path, seed: int = 0) -> Path:
    """A run folder as ``ctxray train`` writes it (random weights; tiny ViT; a cache with spec.json)."""
    import torch

    from ctxray.data.spec import get_preset
    from ctxray.labels import load_labels
    from ctxray.models.dual import DualEncoder, DualEncoderConfig
    from ctxray.models.text import TextEncoderConfig, Tokenizer
    from ctxray.train.checkpoint import save_checkpoint
    from ctxray.train.config import DataConfig, TrainConfig

    labels = load_labels()
    prompts = [p for n in labels.names for side in labels.prompts(n) for p in side]
    tok = Tokenizer.train(REPORTS + prompts, vocab_size=400, min_frequency=1)
    cache = root / "cache"
    cache.mkdir(parents=True)
    get_preset("tiny").save(cache / "spec.json")
    text = TextEncoderConfig(hidden=32, layers=1, heads=2, max_length=48, vocab_size=tok.vocab_size)
    cfg = TrainConfig(model=DualEncoderConfig(encoder="vit3d_tiny", input_shape=(16, 32, 32), embed_dim=32,
                                              text=text),
                      data=DataConfig(cache=str(cache)))
    torch.manual_seed(seed)
    model = DualEncoder(cfg.model).eval()
    run = root / "run"
    save_checkpoint(run / "checkpoints" / "best", model, tok, cfg, metrics={"val_zero_shot_auc": 0.61})
    return run


def synthetic_ct(shape=(20, 40, 44), seed: int = 0) -> np.ndarray:
    """A small chest-like HU volume (body, lungs, a nodule) on the RAS (D, H, W) grid."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z, y, x = np.meshgrid(np.linspace(-1, 1, d), np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    body = (y / 0.8) ** 2 + (x / 0.9) ** 2 <= 1
    hu[body] = 40.0
    for cx in (-0.45, 0.45):
        hu[((y / 0.55) ** 2 + ((x - cx) / 0.35) ** 2 <= 1) & (np.abs(z) < 0.9)] = -850.0
    hu[(z - 0.2) ** 2 + (y + 0.1) ** 2 + (x - 0.45) ** 2 <= 0.02] = 30.0
    return (hu + rng.normal(0, 15, shape)).astype(np.float32)
