"""Linear probing and full fine-tuning of the CT volume encoder for multi-label classification.

For every label fraction f (e.g. 1 %, 10 %, 100 %) a seeded subset of ceil(f * N) labelled training
volumes is drawn (subsets are nested: the 1 % volumes are among the 10 %); the pretrained encoder and
the same architecture from random initialisation ("scratch") are each trained on it and evaluated on
the evaluation split with the zero-shot metrics (AUROC, Youden-threshold F1/accuracy/precision/recall,
per volume and per scan, bootstrap intervals).

- ``probe``: the encoder is frozen; its pooled features (standardised with the training subset's mean
  and std) feed an L2-regularised logistic regression fitted with L-BFGS (a convex problem).
- ``full``: encoder + linear head trained end to end with AdamW (encoder learning rate 10x lower).
Unknown labels (NaN) are masked out of the binary cross-entropy.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from ctxray.data.cachedir import manifest_path, read_cache, scan_ids
from ctxray.data.dataset import CTCacheDataset
from ctxray.evaluate.protocol import zero_shot_protocols
from ctxray.evaluate.report import write_csv, write_json
from ctxray.evaluate.run import resolve_device
from ctxray.labels import CT_RATE_LABELS
from ctxray.models.registry import create_volume_encoder
from ctxray.train.checkpoint import load_model
from ctxray.utils.progress import progress

log = logging.getLogger(__name__)

Mode = Literal["probe", "full"]


@dataclass
class FinetuneSettings:
    """Optimisation settings.

    Args:
        epochs: passes over the labelled subset (``full``).
        probe_steps: L-BFGS iterations of the linear probe.
        lr: head learning rate (the encoder gets ``lr * encoder_lr_mult`` in ``full``).
        encoder_lr_mult: encoder learning-rate multiplier in ``full``.
        weight_decay: the probe's L2 penalty on the weights; AdamW decay in ``full``.
        batch_size: volumes per step (``full``) and per feature-extraction pass.
        n_boot: bootstrap replicates of the evaluation (0: none).
    """

    epochs: int = 10
    probe_steps: int = 200
    lr: float = 1e-3
    encoder_lr_mult: float = 0.1
    weight_decay: float = 1e-3
    batch_size: int = 4
    n_boot: int = 1000


def fraction_subset(n: int, fraction: float, seed: int) -> np.ndarray:
    """Indices of a seeded subset of ``ceil(fraction * n)`` rows (at least one); nested across fractions.

    Shape:
        output: (k,) sorted int64
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction {fraction} must be in (0, 1]")
    k = max(1, math.ceil(fraction * n - 1e-9))
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:k])


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy averaged over known (non-NaN) entries.

    Shape:
        logits, y: (B, L)
    """
    known = ~torch.isnan(y)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], y[known])


def _loader(dataset: Any, batch_size: int, shuffle: bool = False, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, generator=gen)


def extract_features(encoder: nn.Module, dataset: Any, batch_size: int = 4,
                     desc: str = "features") -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Pooled encoder features, labels and ids of every item (no gradients, eval mode).

    Returns:
        (features (N, C) float32, labels (N, L) float64 with NaN, ids).
    """
    was = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    feats, labels, ids = [], [], []
    try:
        with torch.no_grad():
            for batch in progress(_loader(dataset, batch_size), desc=desc, unit="batch"):
                feats.append(encoder(batch["volume"].to(device)).float().cpu())
                labels.append(np.asarray(batch["labels"], dtype=np.float64))
                ids.extend(str(i) for i in batch["id"])
    finally:
        encoder.train(was)
    return torch.cat(feats), np.concatenate(labels), ids


def train_probe(x: torch.Tensor, y: np.ndarray, settings: FinetuneSettings, seed: int) -> Callable:
    """Fit an L2-regularised logistic-regression layer on standardised features (L-BFGS, convex).

    The penalty is ``weight_decay * ||W||^2`` (bias not penalised); ``probe_steps`` caps L-BFGS iterations.

    Returns:
        ``predict(features (M, C)) -> probabilities (M, L)`` (numpy).
    """
    torch.manual_seed(seed)
    x = x.double()
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    if x.shape[0] < 2:
        std = torch.ones_like(std)
    xs = (x - mean) / std
    yt = torch.as_tensor(y, dtype=torch.float64)
    head = nn.Linear(x.shape[1], yt.shape[1]).double()
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=settings.probe_steps,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = masked_bce(head(xs), yt) + settings.weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)

    def predict(features: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(head((features.double() - mean) / std)).float().numpy()

    return predict


def train_full(encoder: nn.Module, dataset: Any, n_labels: int, settings: FinetuneSettings, seed: int,
               desc: str = "fine-tune") -> nn.Module:
    """Train a copy of ``encoder`` plus a linear head end to end; returns ``nn.Sequential(encoder, head)``."""
    torch.manual_seed(seed)
    enc = copy.deepcopy(encoder)
    for p in enc.parameters():
        p.requires_grad_(True)
    out_dim = int(enc.out_dim)
    model = nn.Sequential(enc, nn.Linear(out_dim, n_labels))
    device = next(enc.parameters()).device
    model.to(device).train()
    opt = torch.optim.AdamW([
        {"params": enc.parameters(), "lr": settings.lr * settings.encoder_lr_mult},
        {"params": model[1].parameters(), "lr": settings.lr},
    ], weight_decay=settings.weight_decay)
    for epoch in range(settings.epochs):
        losses = []
        for batch in _loader(dataset, settings.batch_size, shuffle=True, seed=seed + epoch):
            opt.zero_grad()
            loss = masked_bce(model(batch["volume"].to(device)), batch["labels"].float().to(device))
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        log.debug("%s epoch %d: loss %.4f", desc, epoch + 1, float(np.mean(losses)))
    return model.eval()


def _predict(model: nn.Module, dataset: Any, batch_size: int) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.no_grad():
        return np.concatenate([torch.sigmoid(model(b["volume"].to(device))).cpu().numpy()
                               for b in _loader(dataset, batch_size)])


def finetune_compare(encoders: dict[str, nn.Module], train_ds: Any, eval_ds: Any, names: Sequence[str],
                     scan_of: dict[str, str], mode: Mode, fractions: Sequence[float], seed: int = 0,
                     settings: FinetuneSettings | None = None) -> dict:
    """Train and evaluate every encoder at every label fraction.

    Args:
        encoders: name (``pretrained``, ``scratch``) -> volume encoder ``(B,1,D,H,W) -> (B, out_dim)``.
        train_ds, eval_ds: datasets of ``{"id", "volume", "labels" (L,)}`` items (``CTCacheDataset``).
        names: label names (columns of ``labels``).
        scan_of: volume id -> scan id of the evaluation split.
        mode: ``probe`` or ``full``.
        fractions: label fractions in (0, 1].
        seed: subset and training seed.

    Returns:
        ``{"mode", "fractions": {str(f): {"n_train": k, encoder name: zero_shot_protocols block}}, ...}``.
    """
    settings = settings or FinetuneSettings()
    if mode not in ("probe", "full"):
        raise ValueError(f"finetune mode {mode!r}: expected 'probe' or 'full'")
    n_train = len(train_ds)
    eval_cache: dict[str, tuple[torch.Tensor, np.ndarray, list[str]]] = {}
    train_cache: dict[str, tuple[torch.Tensor, np.ndarray, list[str]]] = {}
    if mode == "probe":
        for name, enc in encoders.items():
            train_cache[name] = extract_features(enc, train_ds, settings.batch_size, f"features train ({name})")
            eval_cache[name] = extract_features(enc, eval_ds, settings.batch_size, f"features eval ({name})")
        _, y_eval, ids_eval = next(iter(eval_cache.values()))
    else:
        y_eval, ids_eval = _eval_labels(eval_ds, settings.batch_size)
    scans = [scan_of.get(i, i) for i in ids_eval]
    results: dict[str, Any] = {}
    for f in fractions:
        idx = fraction_subset(n_train, f, seed)
        entry: dict[str, Any] = {"n_train": int(len(idx))}
        for name, enc in encoders.items():
            if mode == "probe":
                x, y, _ = train_cache[name]
                probs = train_probe(x[idx], y[idx], settings, seed)(eval_cache[name][0])
            else:
                model = train_full(enc, Subset(train_ds, idx.tolist()), len(names), settings, seed,
                                   desc=f"{name} f={f}")
                probs = _predict(model, eval_ds, settings.batch_size)
            entry[name] = zero_shot_protocols(y_eval, probs, scans, names, n_boot=settings.n_boot, seed=seed)
            log.info("%s %s fraction %g (%d volumes): macro AUROC %.3f, F1 %.3f", mode, name, f, len(idx),
                     entry[name]["macro"]["auroc"], entry[name]["macro"]["f1"])
        results[f"{f:g}"] = entry
    return {"mode": mode, "seed": seed, "n_train_total": n_train, "fractions": results,
            "settings": settings.__dict__, "labels": list(names),
            "rule": "nested seeded label subsets; pretrained vs same architecture from random init"}


def _eval_labels(dataset: Any, batch_size: int) -> tuple[np.ndarray, list[str]]:
    labels, ids = [], []
    for batch in _loader(dataset, batch_size):
        labels.append(np.asarray(batch["labels"], dtype=np.float64))
        ids.extend(str(i) for i in batch["id"])
    return np.concatenate(labels), ids


def summary_rows(result: dict) -> list[dict[str, Any]]:
    """One row per (fraction, encoder): macro metrics with 95 % intervals, per volume."""
    rows = []
    for frac, entry in result["fractions"].items():
        for name, block in entry.items():
            if name == "n_train":
                continue
            row: dict[str, Any] = {"mode": result["mode"], "fraction": frac, "encoder": name,
                                   "n_train": entry["n_train"]}
            for m in ("auroc", "f1", "accuracy", "precision", "recall"):
                lo, hi = block["macro_ci95"][m]
                row.update({m: block["macro"][m], f"{m}_lo": lo, f"{m}_hi": hi})
            row["auroc_per_scan"] = block["per_scan"]["macro"]["auroc"]
            rows.append(row)
    return rows


def finetune_checkpoint(checkpoint: str, cache: str, out: str, mode: Mode = "probe",
                        fractions: Sequence[float] = (0.01, 0.1, 1.0), train_split: str = "train",
                        eval_split: str = "valid", seed: int = 0, scratch: bool = True,
                        settings: FinetuneSettings | None = None, device: str = "auto") -> dict:
    """Probe / fine-tune a trained model's volume encoder against the same encoder from scratch.

    Writes ``out/metrics.json`` (``finetune_compare``'s result) and ``out/summary.csv``
    (``summary_rows``).

    Args:
        checkpoint: a run folder or checkpoint folder (``load_model``).
        cache: a volume cache with labels for ``train_split`` and ``eval_split``.
        out: output folder.
        scratch: also train the randomly initialised encoder (the comparison).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``.
    """
    dev = resolve_device(device)
    model, _, config = load_model(checkpoint, map_location=dev)
    encoders: dict[str, nn.Module] = {"pretrained": model.volume_encoder}
    if scratch:
        torch.manual_seed(seed)
        kwargs = dict(config.model.encoder_kwargs)
        kwargs["input_shape"] = tuple(model.volume_encoder.input_shape)
        encoders["scratch"] = create_volume_encoder(config.model.encoder, **kwargs).to(dev)
    index = read_cache(cache)  # one read serves both splits and the scan ids
    train_ds, eval_ds = CTCacheDataset(index, split=train_split), CTCacheDataset(index, split=eval_split)
    scan_of = scan_ids(list(index.rows), manifest_path(cache))
    result = finetune_compare(encoders, train_ds, eval_ds, CT_RATE_LABELS, scan_of, mode, fractions, seed, settings)
    result.update({"checkpoint": str(checkpoint), "cache": str(cache), "train_split": train_split,
                   "eval_split": eval_split})
    write_json(Path(out) / "metrics.json", result)
    write_csv(Path(out) / "summary.csv", summary_rows(result))
    return result
