"""Zero-shot classification with positive/negative prompt ensembles, for any CLIP-style model.

For each label, every positive prompt and every negative prompt from ``LabelSet.prompts`` is
encoded by a text tower; the (L2-normalised) embeddings of each ensemble are averaged and
re-normalised. An image's (volume's) probability for a label is the softmax over its two scaled cosine
similarities (positive vs negative ensemble), i.e. ``sigmoid(scale * (cos_pos - cos_neg))``.

The ensembles are built from an ``encode_text(texts) -> (N, E)`` callable (:func:`prompt_ensembles`), so
the X-ray expert (``ctxray.teacher``), its prompt-anchored loss and the CT dual encoder share one
definition; :func:`prompt_embeddings` is the dual encoder's (a model with ``encode_text(ids, mask)`` and a
tokenizer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
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


def prompt_texts(label_set: LabelSet, names: Sequence[str] | None = None) -> tuple[list[str], list[tuple[int, int]]]:
    """Every prompt of the labels in one list (each label's positives, then its negatives) and their counts.

    Args:
        label_set: labels and prompt templates (``ctxray.labels.load_labels``).
        names: the labels, in output order; default all of ``label_set.names``.

    Returns:
        (texts, counts): ``counts[l] = (n_pos, n_neg)`` of label ``l``.
    """
    texts: list[str] = []
    counts: list[tuple[int, int]] = []
    for name in label_set.names if names is None else names:
        pos, neg = label_set.prompts(name)
        if not pos or not neg:
            raise ValueError(f"{label_set.source}: label {name!r} has no positive or no negative prompt")
        counts.append((len(pos), len(neg)))
        texts.extend(pos + neg)
    return texts, counts


def ensemble_directions(text_emb: torch.Tensor, counts: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised mean of each label's positive and of its negative prompt embeddings (differentiable).

    Args:
        text_emb: L2-normalised prompt embeddings in :func:`prompt_texts` order.
        counts: ``(n_pos, n_neg)`` per label.

    Shape:
        text_emb: (sum of counts, E) -> pos (L, E), neg (L, E)
    """
    pos_rows, neg_rows, start = [], [], 0
    for n_pos, n_neg in counts:
        pos_rows.append(text_emb[start:start + n_pos].mean(0))
        neg_rows.append(text_emb[start + n_pos:start + n_pos + n_neg].mean(0))
        start += n_pos + n_neg
    return F.normalize(torch.stack(pos_rows), dim=-1), F.normalize(torch.stack(neg_rows), dim=-1)


def prompt_ensembles(encode_text: Callable[[list[str]], torch.Tensor], label_set: LabelSet,
                     names: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-ensemble embeddings of labels from any text tower; all prompts are encoded in one call.

    Args:
        encode_text: texts -> L2-normalised embeddings ``(len(texts), E)``.
        label_set: labels and prompt templates.
        names: the labels, in output order; default all of ``label_set.names``.

    Returns:
        (pos, neg), rows in ``names`` order, unit norm.

    Shape:
        pos, neg: (L, E)
    """
    texts, counts = prompt_texts(label_set, names)
    return ensemble_directions(encode_text(texts), counts)


def prompt_embeddings(model: TextModel, tokenizer: Any, label_set: LabelSet,
                      max_length: int = DEFAULT_MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt-ensemble embeddings of every label of a label set with a dual encoder's text tower.

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
    return prompt_ensembles(lambda texts: encode_texts(model, tokenizer, texts, max_length=max_length), label_set)


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
