"""Validation during training: contrastive loss, report retrieval R@1 and quick zero-shot macro AUROC."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

import numpy as np
import torch

from ctxray.labels import CT_RATE_LABELS, load_labels
from ctxray.losses import RobustContrastiveLoss
from ctxray.metrics import auroc_per_label, macro, per_query_recall
from ctxray.models.zeroshot import prompt_embeddings, zero_shot_probs
from ctxray.train.data import to_device
from ctxray.train.distributed import gather_features

log = logging.getLogger(__name__)


@torch.no_grad()
def embed_pairs(model: Any, loader: Any, device: torch.device,
                autocast: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume and report embeddings of every pair a loader yields (model in eval mode meanwhile).

    Returns:
        (volume (N, E), text (N, E), labels (N, 18)) float32 on CPU.
    """
    was_training = model.training
    model.eval()
    vols, texts, labels = [], [], []
    try:
        for batch in loader:
            batch = to_device(batch, device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                vols.append(model.encode_volume(batch["volume"]).float().cpu())
                texts.append(model.encode_text(batch["input_ids"], batch["attention_mask"]).float().cpu())
            labels.append(batch["labels"].float().cpu())
    finally:
        model.train(was_training)
    if not vols:  # an empty shard (fewer validation volumes than ranks)
        width = int(model.cfg.embed_dim)
        return torch.zeros(0, width), torch.zeros(0, width), torch.zeros(0, len(CT_RATE_LABELS))
    return torch.cat(vols), torch.cat(texts), torch.cat(labels)


def clip_loss_in_chunks(volume: torch.Tensor, text: torch.Tensor, scale: float, chunk: int) -> float:
    """Plain InfoNCE averaged over consecutive chunks of ``chunk`` pairs (the training batch size), so
    runs with different false-negative corrections are compared on one scale."""
    loss_fn = RobustContrastiveLoss("none")
    values = [float(loss_fn(volume[s:s + chunk], text[s:s + chunk], scale))
              for s in range(0, volume.shape[0] - 1, chunk) if volume[s:s + chunk].shape[0] >= 2]
    return float(np.mean(values)) if values else math.nan


def validate(model: Any, tokenizer: Any, loader: Any, device: torch.device, chunk: int,
             autocast: Any = None, label_set: Any = None) -> dict[str, float]:
    """Validation scores of a dual encoder.

    Args:
        model: the bare ``DualEncoder``.
        tokenizer: for the zero-shot prompts.
        loader: yields collated validation batches (under DDP, this rank's shard; embeddings are
            gathered so every rank returns the scores of the whole split).
        chunk: pairs per contrastive-loss chunk.
        label_set: the labels and prompts (``ctxray.labels.load_labels()`` by default).

    Returns:
        ``val_loss`` (plain InfoNCE), ``val_r1`` (volume -> report recall@1 over the whole split, tie-aware),
        ``val_auroc`` (zero-shot macro AUROC over labels with both classes; NaN if none),
        ``val_report_auroc`` (the same prompts scoring the validation *reports*: the report tower's ceiling
        on zero-shot), ``val_n``.
    """
    local = embed_pairs(model, loader, device, autocast)  # this rank's shard
    volume, text, labels = (gather_features(x.to(device)).cpu() for x in local)
    scale = float(model.scale().detach())
    sims = volume @ text.T  # (N, N)
    r1 = float(per_query_recall(sims, (1,))["R@1"].mean())
    pos, neg = prompt_embeddings(model, tokenizer, label_set or load_labels())
    probs = zero_shot_probs(volume, pos, neg, scale)
    auroc = macro(auroc_per_label(labels.numpy(), probs.numpy()))
    report_auroc = macro(auroc_per_label(labels.numpy(), zero_shot_probs(text, pos, neg, scale).numpy()))
    return {"val_loss": clip_loss_in_chunks(volume, text, scale, chunk), "val_r1": r1, "val_auroc": auroc,
            "val_report_auroc": report_auroc, "val_n": int(len(volume))}
