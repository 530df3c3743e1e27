"""Zero-shot classification with positive/negative prompt ensembles.

For each label, every positive prompt and every negative prompt from ``LabelSet.prompts`` is
encoded by the model's text tower; the (L2-normalised) embeddings of each ensemble are averaged and
re-normalised. A volume's probability for a label is the softmax over its two scaled cosine
similarities (positive vs negative ensemble), i.e. ``sigmoid(scale * (cos_pos - cos_neg))``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ctxray.labels import LabelSet

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 64
"""Token budget for prompts (they are one short sentence each)."""


class TextModel(Protocol):
    """What zero-shot needs from a model: a normalised text tower."""

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put ``model`` in eval mode and under ``torch.no_grad`` for the block, restoring its mode after."""
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free model)."""
    params = getattr(model, "parameters", None)
    if params is None:
        return torch.device("cpu")
    for p in params():
        return p.device
    return torch.device("cpu")


def logit_scale_of(model: Any) -> float:
    """The model's (exponentiated) temperature multiplier as a float.

    Uses ``model.scale()`` when the model has it (``DualEncoder``: exp of the clamped log parameter),
    else ``exp(model.logit_scale)`` (open_clip's convention: the parameter is the log multiplier).
    """
    scale = getattr(model, "scale", None)
    value = scale() if callable(scale) else torch.as_tensor(model.logit_scale).exp()
    return float(torch.as_tensor(value).detach())


def encode_texts(model: TextModel, tokenizer: Any, texts: list[str], max_length: int = DEFAULT_MAX_LENGTH,
                 batch_size: int = 64) -> torch.Tensor:
    """Encode texts with the model's text tower, in batches, without gradients.

    Args:
        model: has ``encode_text(input_ids, attention_mask)`` returning L2-normalised embeddings.
        tokenizer: ``tokenizer(texts, max_length) -> dict(input_ids, attention_mask)``.
        texts: the strings to encode.
        max_length: token budget per text.
        batch_size: texts per forward pass.

    Returns:
        Float32 CPU tensor of embeddings.

    Shape:
        output: (len(texts), E)
    """
    if not texts:
        raise ValueError("encode_texts: no texts given")
    device = model_device(model)
    out: list[torch.Tensor] = []
    with eval_mode(model):
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], max_length=max_length)
            ids = torch.as_tensor(batch["input_ids"]).to(device)
            mask = torch.as_tensor(batch["attention_mask"]).to(device)
            out.append(model.encode_text(ids, mask).float().cpu())
    return torch.cat(out)


def prompt_embeddings(model: TextModel, tokenizer: Any, label_set: LabelSet,
                      max_length: int = DEFAULT_MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-ensemble embeddings for every label of a label set.

    All prompts of all labels are encoded in one pass; each label's positive (negative) embeddings
    are averaged and the mean is L2-normalised.

    Args:
        model: has ``encode_text(input_ids, attention_mask)`` (normalised output).
        tokenizer: ``tokenizer(texts, max_length) -> dict(input_ids, attention_mask)``.
        label_set: labels and prompt templates (``ctxray.labels.load_labels``).
        max_length: token budget per prompt.

    Returns:
        (pos, neg) float32 CPU tensors, rows in ``label_set.names`` order, unit norm.

    Shape:
        pos, neg: (L, E)
    """
    texts: list[str] = []
    spans: list[tuple[int, int, int]] = []  # (start, n_pos, n_neg) per label
    for name in label_set.names:
        pos, neg = label_set.prompts(name)
        if not pos or not neg:
            raise ValueError(f"{label_set.source}: label {name!r} has no positive or no negative prompt")
        spans.append((len(texts), len(pos), len(neg)))
        texts.extend(pos + neg)
    emb = encode_texts(model, tokenizer, texts, max_length=max_length)  # (T, E)
    pos_rows = [emb[s:s + p].mean(0) for s, p, _ in spans]
    neg_rows = [emb[s + p:s + p + n].mean(0) for s, p, n in spans]
    return F.normalize(torch.stack(pos_rows), dim=-1), F.normalize(torch.stack(neg_rows), dim=-1)


def zero_shot_logits(volume_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                     logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Log-odds of each label: ``scale * (cos(v, pos_l) - cos(v, neg_l))``.

    Args:
        volume_emb: L2-normalised volume embeddings.
        pos, neg: prompt-ensemble embeddings (``prompt_embeddings``).
        logit_scale: the multiplier applied to cosines (already exponentiated, e.g. ``1/0.07``).

    Shape:
        volume_emb: (N, E); pos, neg: (L, E); output: (N, L)
    """
    if volume_emb.ndim != 2 or pos.shape != neg.shape or volume_emb.shape[1] != pos.shape[1]:
        raise ValueError(f"zero-shot: shapes do not match: volume {tuple(volume_emb.shape)}, "
                         f"pos {tuple(pos.shape)}, neg {tuple(neg.shape)}")
    if isinstance(logit_scale, torch.Tensor):
        logit_scale = logit_scale.detach()
    scale = float(logit_scale)  # a number: evaluation never back-propagates into the scale
    v = volume_emb.to(pos.dtype)
    return scale * (v @ pos.T - v @ neg.T)


def zero_shot_probs(volume_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                    logit_scale: float | torch.Tensor) -> torch.Tensor:
    """Probability of each label: softmax over (positive, negative) scaled cosine similarities.

    Args:
        volume_emb: L2-normalised volume embeddings.
        pos, neg: prompt-ensemble embeddings (``prompt_embeddings``).
        logit_scale: the multiplier applied to cosines (already exponentiated).

    Returns:
        Probabilities in [0, 1]; ranking per label is independent of ``logit_scale`` (> 0).

    Shape:
        volume_emb: (N, E); pos, neg: (L, E); output: (N, L)
    """
    return torch.sigmoid(zero_shot_logits(volume_emb, pos, neg, logit_scale))
