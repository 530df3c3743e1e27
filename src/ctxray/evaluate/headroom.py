"""Headroom: how well the CT side can do at all, per label, before any ablation is read.

Two readouts of a volume cache with labels:

- :func:`supervised_ceiling`: the same encoder at the same input, trained from scratch on the labels
  (binary cross-entropy) instead of the reports, on N = 100, 400, ... training volumes at a fixed number of
  optimiser steps. With all the data it bounds what report supervision can reach; the gap between few and all
  labels is the room distillation has to help in.
- :func:`probe_readout`: a frozen encoder's pooled features, a logistic-regression probe on a fixed label
  budget; the image tower's content read out beside its zero-shot score (a random-init encoder is the floor).

Both score the cache's validation split per label and as macro averages over all labels, the X-ray-visible
ones and the CT-only ones (:func:`group_macros`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctxray.data.dataset import CTCacheDataset
from ctxray.evaluate.finetune import FinetuneSettings, masked_bce, train_probe
from ctxray.labels import CT_RATE_LABELS, load_labels
from ctxray.metrics import auroc_per_label
from ctxray.models.registry import create_volume_encoder
from ctxray.optim import lr_factor, param_groups

log = logging.getLogger(__name__)

__all__ = ["CeilingSettings", "group_macros", "load_split", "probe_readout", "supervised_ceiling",
           "train_supervised"]


@dataclass
class CeilingSettings:
    """How the supervised ceiling is trained.

    Args:
        encoder: volume encoder name (``ctxray.models.registry``). encoder_kwargs: its options.
        steps: optimiser steps per model, whatever N (small N runs more epochs).
        batch_size, lr, weight_decay: AdamW with a linear warm-up over the first 5 % of steps then cosine decay.
    """

    encoder: str = "resnet3d_small"
    steps: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    encoder_kwargs: dict | None = None


@lru_cache(maxsize=2)
def load_split(cache: str | Path, split: str) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Every volume of one split in memory (float16, to halve the RAM of repeated training).

    Kept for the process (the last two splits): a benchmark probes many encoders on the same cache, and
    reading every volume again for each was most of a probe's time. Callers index it; none may modify it.

    Returns:
        (volumes (N, 1, D, H, W) float16, labels (N, 18) float64 with NaN, ids).
    """
    ds = CTCacheDataset(cache, split=split)
    if len(ds) == 0:
        raise ValueError(f"{cache}: no volumes in split {split!r}")
    vols = torch.stack([torch.from_numpy(np.ascontiguousarray(ds.volume(i))).half() for i in range(len(ds))])
    return vols[:, None], ds.labels_matrix().astype(np.float64), ds.ids


def group_macros(auroc: np.ndarray) -> dict[str, float]:
    """Macro AUROC over all labels, the X-ray-visible ones and the CT-only ones (NaN labels skipped)."""
    visible = set(load_labels().xray_visible_names)
    mask = np.array([n in visible for n in CT_RATE_LABELS])

    def mean(sel: np.ndarray) -> float:
        vals = auroc[sel]
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if len(vals) else float("nan")

    return {"macro": mean(np.ones_like(mask)), "xray_visible": mean(mask), "ct_only": mean(~mask)}


def train_supervised(x: torch.Tensor, y: np.ndarray, settings: CeilingSettings, seed: int) -> nn.Module:
    """An encoder plus a linear head trained from random initialisation on ``(x, y)``.

    Shape:
        x: (N, 1, D, H, W) float16/32 in [0, 1]; y: (N, L) with NaN for unknown labels.

    Returns:
        ``nn.Sequential(encoder, head)`` in eval mode, logits ``(B, L)``.
    """
    torch.manual_seed(seed)
    enc = create_volume_encoder(settings.encoder, input_shape=tuple(x.shape[-3:]), **(settings.encoder_kwargs or {}))
    model = nn.Sequential(enc, nn.Linear(int(enc.out_dim), y.shape[1])).train()
    opt = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr)
    warm = max(1, settings.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, settings.steps, warm, min_ratio=0.0))
    yt = torch.as_tensor(y, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    pos = 0
    for _ in range(settings.steps):
        if pos + settings.batch_size > len(order):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos:pos + settings.batch_size]
        pos += settings.batch_size
        opt.zero_grad(set_to_none=True)
        loss = masked_bce(model(x[idx].float()), yt[idx])
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def _scores(model: nn.Module, x: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    return np.concatenate([model(x[i:i + batch_size].float()).float().numpy() for i in range(0, len(x), batch_size)])


def _subset(n_total: int, n: int, seed: int) -> np.ndarray:
    """``n`` training indices, nested across N for one seed (the first n of one seeded permutation)."""
    return np.random.default_rng(seed).permutation(n_total)[:min(n, n_total)]


def supervised_ceiling(cache: str | Path, ns: Sequence[int | None], seeds: Sequence[int],
                       settings: CeilingSettings | None = None) -> dict[str, Any]:
    """Train the supervised ceiling at each N (None: all training volumes) and seed; score validation.

    Returns:
        ``{"settings", "n_valid", "valid_positives", "runs": [{"n", "seed", "seconds", "auroc": {label: a},
        "macro", "xray_visible", "ct_only"}], "labels"}``.
    """
    settings = settings or CeilingSettings()
    x_tr, y_tr, _ = load_split(cache, "train")
    x_va, y_va, _ = load_split(cache, "valid")
    runs = []
    for seed in seeds:
        for n in ns:
            idx = _subset(len(x_tr), n or len(x_tr), seed)
            t0 = time.perf_counter()
            model = train_supervised(x_tr[idx], y_tr[idx], settings, seed)
            auroc = auroc_per_label(y_va, _scores(model, x_va))
            run = {"n": int(len(idx)), "seed": int(seed), "seconds": round(time.perf_counter() - t0, 1),
                   "auroc": {name: _num(a) for name, a in zip(CT_RATE_LABELS, auroc)}, **group_macros(auroc)}
            log.info("supervised ceiling N=%d seed %d: macro %.3f (X-ray-visible %.3f, CT-only %.3f) in %.0f s",
                     run["n"], seed, run["macro"], run["xray_visible"], run["ct_only"], run["seconds"])
            runs.append(run)
    return {"settings": asdict(settings), "cache": str(cache), "n_train_total": int(len(x_tr)),
            "n_valid": int(len(x_va)), "valid_positives": _positives(y_va), "labels": list(CT_RATE_LABELS),
            "runs": runs}


def probe_readout(encoder: nn.Module, cache: str | Path, budget: int, seed: int = 0,
                  weight_decay: float = 1e-3) -> dict[str, Any]:
    """Frozen-feature logistic-regression probe on ``budget`` labelled training volumes; validation AUROC.

    Returns:
        ``{"n", "seed", "auroc": {label: a}, "macro", "xray_visible", "ct_only"}``.
    """
    x_tr, y_tr, _ = load_split(cache, "train")
    x_va, y_va, _ = load_split(cache, "valid")
    idx = _subset(len(x_tr), budget, seed)
    was = encoder.training
    encoder.eval()
    try:
        f_tr, f_va = torch.from_numpy(_scores(encoder, x_tr[idx])), torch.from_numpy(_scores(encoder, x_va))
    finally:
        encoder.train(was)
    predict = train_probe(f_tr, y_tr[idx], FinetuneSettings(weight_decay=weight_decay), seed)
    auroc = auroc_per_label(y_va, predict(f_va))
    return {"n": int(len(idx)), "seed": int(seed), "auroc": {n: _num(a) for n, a in zip(CT_RATE_LABELS, auroc)},
            **group_macros(auroc)}


def _num(a: float) -> float | None:
    return None if np.isnan(a) else round(float(a), 4)


def _positives(y: np.ndarray) -> dict[str, int]:
    return {name: int(np.nansum(y[:, j])) for j, name in enumerate(CT_RATE_LABELS)}
