"""BIUD's losses, each its own ``nn.Module`` (models return features, never losses).

- :class:`RobustContrastiveLoss` (L_RoCo): symmetric CLIP InfoNCE between volume and report embeddings in
  which pairs with semantically equivalent reports are not treated as negatives (multi-positive or soft
  targets). ``correction="none"`` is plain InfoNCE.
- :class:`PairwiseKDLoss` (L_PKD): pulls the CT embedding's KD projection to the cached teacher embedding of
  the retrieved X-ray.
- :class:`RelationKDLoss` (L_SRKD): KL between the teacher's and the student's in-batch similarity
  distributions.
- :class:`MaskedLMLoss` and :func:`mask_entity_tokens` (L_MLM): masked language modelling that masks clinical
  entity tokens preferentially.
- :class:`ReportPromptLoss` (L_prompt): binary cross-entropy of the zero-shot score of each *report* (its
  embedding against the prompt ensembles, scored exactly as zero-shot scores a volume) against that report's
  labels: it trains the report tower to read reports the way zero-shot will read prompts.
- :func:`balanced_cell_bce`: binary cross-entropy of a localising classifier's per-cell logits against where
  the lesions are (the supervised reference of the explanation benchmark, not BIUD).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctxray.models.zeroshot import zero_shot_logits

__all__ = [
    "MaskedLMLoss",
    "PairwiseKDLoss",
    "RelationKDLoss",
    "ReportPromptLoss",
    "RobustContrastiveLoss",
    "balanced_cell_bce",
    "contrastive_targets",
    "equivalence_from_labels",
    "equivalence_from_text",
    "mask_entity_tokens",
]

Correction = Literal["none", "multi_positive", "soft"]


def equivalence_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """Pairs whose label vectors are exactly equal (e.g. two entirely normal patients).

    Args:
        labels: (B, L) label vectors; a row containing NaN (unknown labels) is equivalent to no other row.

    Returns:
        (B, B) bool, symmetric, diagonal always True.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be (B, L); got shape {tuple(labels.shape)}")
    known = ~torch.isnan(labels).any(dim=1)  # (B,)
    same = (labels[:, None, :] == labels[None, :, :]).all(dim=2)  # (B, B)
    eq = same & known[:, None] & known[None, :]
    return eq | torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)


def equivalence_from_text(emb: torch.Tensor, threshold: float) -> torch.Tensor:
    """Pairs whose report embeddings have cosine similarity at or above ``threshold``.

    Args:
        emb: (B, D) report embeddings (any scale; normalised here; no gradient flows).
        threshold: cosine similarity in [-1, 1].

    Returns:
        (B, B) bool, symmetric, diagonal always True.
    """
    if emb.dim() != 2:
        raise ValueError(f"emb must be (B, D); got shape {tuple(emb.shape)}")
    e = F.normalize(emb.detach().float(), dim=1)
    eq = (e @ e.T) >= threshold
    return eq | torch.eye(emb.shape[0], dtype=torch.bool, device=emb.device)


def contrastive_targets(
    n_rows: int,
    n_cols: int,
    correction: Correction,
    equivalent: torch.Tensor | None,
    text_sim: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """Row-stochastic target matrix for the volume->text direction.

    Row i puts mass on column i (its own report) and, with a correction, on every column j whose report is
    equivalent to i's: uniformly (``multi_positive``) or in proportion to ``clamp(text_sim[i, j], 0, 1)``
    (``soft``; the own report keeps weight 1). Without ``equivalent`` (or ``correction="none"``) the targets
    are the identity.

    Returns:
        (n_rows, n_cols) float32, rows summing to 1.
    """
    eye = torch.eye(n_rows, n_cols, device=device)
    if correction == "none" or equivalent is None:
        return eye
    support = equivalent.to(device=device, dtype=torch.bool) | eye.bool()
    if correction == "multi_positive":
        weights = support.float()
    else:
        if text_sim is None:
            raise ValueError("correction='soft' needs text_sim (B, B)")
        weights = torch.where(support, text_sim.detach().float().to(device).clamp(0.0, 1.0), 0.0)
        weights = torch.where(eye.bool(), 1.0, weights)
    return weights / weights.sum(dim=1, keepdim=True)


class RobustContrastiveLoss(nn.Module):
    """Symmetric InfoNCE with false-negative correction (L_RoCo).

    Args:
        correction: ``"none"`` (plain CLIP InfoNCE), ``"multi_positive"`` (equivalent reports are extra
            positives with equal weight) or ``"soft"`` (equivalent reports weighted by text similarity).
        reduction: ``"mean"`` (scalar) or ``"none"``: per sample i, the mean of volume i's (v->t) and
            report i's (t->v) cross-entropy terms, shape (B,).

    Call args:
        volume: (B, E) L2-normalised volume embeddings.
        text: (B, E) L2-normalised report embeddings (row i is volume i's report).
        logit_scale: the exp'ed temperature (scalar tensor or float): logits = scale * volume @ text.T.
        equivalent: optional (B, B) bool, True where reports i and j are semantically the same (symmetric;
            the diagonal is always positive). Ignored when ``correction="none"``.
        text_sim: optional (B, B) report similarity in [-1, 1]; required for ``correction="soft"``.

    Returns:
        Scalar (or (B,) with ``reduction="none"``): mean of the volume->text and text->volume soft
        cross-entropies.
    """

    def __init__(self, correction: Correction = "multi_positive", reduction: Literal["mean", "none"] = "mean") -> None:
        super().__init__()
        if correction not in ("none", "multi_positive", "soft"):
            raise ValueError(f"correction must be 'none', 'multi_positive' or 'soft'; got {correction!r}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none'; got {reduction!r}")
        self.correction = correction
        self.reduction = reduction

    def forward(
        self,
        volume: torch.Tensor,
        text: torch.Tensor,
        logit_scale: torch.Tensor | float,
        equivalent: torch.Tensor | None = None,
        text_sim: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if volume.dim() != 2 or volume.shape != text.shape:
            raise ValueError(f"volume and text must both be (B, E); got {tuple(volume.shape)}, {tuple(text.shape)}")
        b = volume.shape[0]
        for name, m in (("equivalent", equivalent), ("text_sim", text_sim)):
            if m is not None and m.shape != (b, b):
                raise ValueError(f"{name} must be ({b}, {b}); got {tuple(m.shape)}")
        logits = logit_scale * volume @ text.T  # (B, B): volume i vs report j
        if self.correction == "none" or equivalent is None:
            labels = torch.arange(b, device=volume.device)
            per_v2t = F.cross_entropy(logits, labels, reduction="none")  # (B,)
            per_t2v = F.cross_entropy(logits.T, labels, reduction="none")  # (B,)
        else:
            t_v2t = contrastive_targets(b, b, self.correction, equivalent, text_sim, volume.device)
            sim_t = None if text_sim is None else text_sim.T
            t_t2v = contrastive_targets(b, b, self.correction, equivalent.T, sim_t, volume.device)
            per_v2t = -(t_v2t.to(logits.dtype) * F.log_softmax(logits, dim=1)).sum(dim=1)
            per_t2v = -(t_t2v.to(logits.dtype) * F.log_softmax(logits.T, dim=1)).sum(dim=1)
        per_sample = 0.5 * (per_v2t + per_t2v)
        return per_sample if self.reduction == "none" else per_sample.mean()


class PairwiseKDLoss(nn.Module):
    """Pair-wise distillation to the teacher embedding of the retrieved X-ray (L_PKD).

    Args:
        kind: ``"cosine"`` (mean of 1 - cos) or ``"mse"`` (mean squared Euclidean distance between the
            L2-normalised vectors, summed over dimensions: ``2 - 2 cos``).

    Call args:
        student: (B, Dt) KD projection of the CT embedding (normalised here).
        teacher: (B, Dt) teacher targets (normalised here; never receives gradients).

    Returns:
        Scalar, 0 when student and teacher point the same way.
    """

    def __init__(self, kind: Literal["cosine", "mse"] = "cosine") -> None:
        super().__init__()
        if kind not in ("cosine", "mse"):
            raise ValueError(f"kind must be 'cosine' or 'mse'; got {kind!r}")
        self.kind = kind

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape or student.dim() != 2:
            raise ValueError(
                f"student and teacher must both be (B, Dt); got {tuple(student.shape)}, {tuple(teacher.shape)}"
            )
        s = F.normalize(student, dim=1)
        t = F.normalize(teacher.detach().to(student.dtype), dim=1)
        if self.kind == "cosine":
            return (1.0 - (s * t).sum(dim=1)).mean()
        return (s - t).pow(2).sum(dim=1).mean()


def _offdiag_log_probs(x: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-wise log-softmax over j != i of cos(x_i, x_j) / tau. Shape: (B, D) -> (B, B-1)."""
    x = F.normalize(x, dim=1)
    sim = x @ x.T / tau  # (B, B)
    b = sim.shape[0]
    off = ~torch.eye(b, dtype=torch.bool, device=sim.device)
    return F.log_softmax(sim[off].view(b, b - 1), dim=1)


class RelationKDLoss(nn.Module):
    """Semantic-relation distillation (L_SRKD): KL(teacher || student) of in-batch similarity distributions.

    For each i the distribution over j != i is ``softmax_j(cos(x_i, x_j) / tau)``.

    Args:
        tau: student temperature.
        teacher_tau: teacher temperature (defaults to ``tau``).

    Call args:
        student: (B, Ds) CT embeddings; teacher: (B, Dt) teacher embeddings (detached). Ds may differ from Dt.

    Returns:
        Scalar, mean over rows of the KL divergence; 0 for B < 2 (no relations).
    """

    def __init__(self, tau: float = 0.1, teacher_tau: float | None = None) -> None:
        super().__init__()
        if tau <= 0 or (teacher_tau is not None and teacher_tau <= 0):
            raise ValueError(f"temperatures must be positive; got tau={tau}, teacher_tau={teacher_tau}")
        self.tau = tau
        self.teacher_tau = tau if teacher_tau is None else teacher_tau

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"student and teacher must be (B, D) with equal B; got {tuple(student.shape)}, {tuple(teacher.shape)}"
            )
        if student.shape[0] < 2:
            return student.sum() * 0.0
        log_p_s = _offdiag_log_probs(student, self.tau)
        log_p_t = _offdiag_log_probs(teacher.detach().to(student.dtype), self.teacher_tau)
        return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")


class MaskedLMLoss(nn.Module):
    """Cross-entropy over masked positions (labels -100 are ignored).

    Call args:
        logits: (B, L, V) token logits; labels: (B, L) long, the original id where masked, else -100.

    Returns:
        Scalar mean over masked tokens; 0 (with a graph) when nothing is masked.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 3 or labels.shape != logits.shape[:2]:
            raise ValueError(
                f"logits must be (B, L, V) and labels (B, L); got {tuple(logits.shape)}, {tuple(labels.shape)}"
            )
        if not (labels != -100).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


class ReportPromptLoss(nn.Module):
    """Zero-shot scores of the reports themselves, trained against the reports' labels (L_prompt).

    Label ``l`` of report ``i`` gets the logit ``scale * (cos(t_i, pos_l) - cos(t_i, neg_l))``, exactly the
    zero-shot score (``ctxray.models.zeroshot.zero_shot_logits``) with the report in place of the volume; the
    loss is the binary cross-entropy of those logits against the labels, averaged over the known (finite)
    entries. ``pos`` / ``neg`` come from the text tower being trained, so gradients reach both the reports'
    and the prompts' embeddings. The scale is fixed (zero-shot ranking does not depend on it; a learnt one
    would be a parameter outside the model).

    Args:
        scale: multiplier of the cosine difference (within [-2, 2]).

    Call args:
        text: (B, E) L2-normalised report embeddings.
        pos, neg: (L, E) L2-normalised prompt-ensemble directions
            (``ctxray.models.zeroshot.ensemble_directions``).
        labels: (B, L) float, 1 positive, 0 negative, NaN unknown (uncertain or missing: left out).

    Returns:
        Scalar mean over known entries; 0 (with a graph) when no entry is known.
    """

    def __init__(self, scale: float = 10.0) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be positive; got {scale}")
        self.scale = float(scale)

    def forward(self, text: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if text.dim() != 2 or pos.shape != neg.shape or pos.dim() != 2 or text.shape[1] != pos.shape[1]:
            raise ValueError(f"text must be (B, E) and pos/neg (L, E); got {tuple(text.shape)}, "
                             f"{tuple(pos.shape)}, {tuple(neg.shape)}")
        if labels.shape != (text.shape[0], pos.shape[0]):
            raise ValueError(f"labels must be ({text.shape[0]}, {pos.shape[0]}); got {tuple(labels.shape)}")
        logits = zero_shot_logits(text, pos, neg, self.scale)  # (B, L): zero-shot's own score of each report
        known = torch.isfinite(labels)
        if not known.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[known], labels[known].to(logits.dtype))


def mask_entity_tokens(
    input_ids: torch.Tensor,
    entity_ids: Collection[int] | torch.Tensor,
    mask_id: int,
    vocab_size: int,
    entity_prob: float = 0.5,
    base_prob: float = 0.15,
    special_ids: Collection[int] | torch.Tensor = (),
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose tokens to mask, clinical-entity tokens with higher probability, BERT-style (80/10/10).

    Args:
        input_ids: (B, L) long token ids.
        entity_ids: ids of tokens that belong to clinical entities (finding names, anatomy...).
        mask_id: the tokenizer's ``[MASK]`` id.
        vocab_size: for the 10% random replacements.
        entity_prob: selection probability of an entity token.
        base_prob: selection probability of any other token.
        special_ids: ids never selected ([CLS], [SEP], [PAD]...).
        attention_mask: (B, L); padding (0) is never selected.
        generator: RNG for repeatable masking.

    Returns:
        ``(masked_ids (B, L), labels (B, L))``: selected tokens are replaced by ``mask_id`` (80%), a random
        id (10%) or kept (10%); ``labels`` holds their original ids and -100 elsewhere.
    """
    for name, p in (("entity_prob", entity_prob), ("base_prob", base_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1]; got {p}")
    dev = input_ids.device
    ent = torch.as_tensor(list(entity_ids) if not torch.is_tensor(entity_ids) else entity_ids, dtype=torch.long)
    spc = torch.as_tensor(list(special_ids) if not torch.is_tensor(special_ids) else special_ids, dtype=torch.long)
    prob = torch.full(input_ids.shape, base_prob, device=dev)
    prob[torch.isin(input_ids, ent.to(dev))] = entity_prob
    prob[torch.isin(input_ids, spc.to(dev))] = 0.0
    if attention_mask is not None:
        prob[attention_mask == 0] = 0.0
    u = torch.rand(input_ids.shape, generator=generator, device=dev)
    selected = u < prob
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    action = torch.rand(input_ids.shape, generator=generator, device=dev)
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator, device=dev)
    masked = torch.where(selected & (action < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, labels


def balanced_cell_bce(logit_map: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of per-cell logits, lesion cells and other cells weighted equally.

    The mean of the BCE over the known (non-NaN) target-1 cells and the mean over the known target-0 cells,
    averaged: a lesion covers a handful of the thousands of cells, so a plain mean would let the loss ignore
    it. NaN targets (a label present somewhere unknown) are left out; with no known cell the loss is 0.

    Shape:
        logit_map, cells: (B, L, d, h, w)
    """
    if logit_map.shape != cells.shape:
        raise ValueError(f"balanced_cell_bce: logits {tuple(logit_map.shape)} vs targets {tuple(cells.shape)}")
    known = ~torch.isnan(cells)
    terms = []
    for keep in (known & (cells > 0.5), known & (cells <= 0.5)):
        if keep.any():
            terms.append(F.binary_cross_entropy_with_logits(logit_map[keep], cells[keep]))
    return torch.stack(terms).mean() if terms else logit_map.sum() * 0.0
