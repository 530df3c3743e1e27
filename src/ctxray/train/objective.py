"""The BIUD objective on one (micro-)batch: gather across ranks, build the false-negative mask, weigh terms.

``L = roco*L_RoCo + pkd*L_PKD + srkd*L_SRKD + mlm*L_MLM + prompt*L_prompt``. The contrastive, pair-wise,
relation and prompt terms are computed on the global batch (features gathered from every rank, local
gradients kept); the MLM term is a per-rank mean. See ``Objective.__call__`` for how the backward loss is
scaled so that DDP's gradient averaging yields exactly the single-process gradient of the global batch.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ctxray.losses import (
    MaskedLMLoss,
    PairwiseKDLoss,
    RelationKDLoss,
    ReportPromptLoss,
    RobustContrastiveLoss,
    equivalence_from_labels,
    equivalence_from_text,
    mask_entity_tokens,
)
from ctxray.models.zeroshot import ensemble_directions
from ctxray.train.config import LOSS_TERMS, LossConfig
from ctxray.train.distributed import gather_features, is_distributed

log = logging.getLogger(__name__)

TERMS = LOSS_TERMS  # the names it logs


def entity_token_ids(tokenizer: Any, phrases: list[str], min_chars: int = 3) -> list[int]:
    """Ids of the word pieces of clinical phrases (label names and prompt phrases), for MLM masking.

    Pieces shorter than ``min_chars`` letters (articles, "of", "or") are left out.
    """
    ids: set[int] = set()
    for phrase in phrases:
        pieces = [p for p in tokenizer.tokenize(phrase) if len(p.lstrip("#")) >= min_chars]
        ids.update(tokenizer.convert_tokens_to_ids(pieces))
    return sorted(ids - set(tokenizer.special_ids))


def _grad_scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged in value, its gradient multiplied by ``factor``."""
    return x if factor == 1.0 else x * factor + (x * (1.0 - factor)).detach()


class Objective(nn.Module):
    """The weighted BIUD loss.

    Args:
        cfg: weights and loss options; a weight of 0 switches its term off (it is not computed).
        entity_ids: token ids masked preferentially by the MLM term.
        special_ids, mask_id, vocab_size: the tokenizer's, for MLM masking.
        prompt_counts: ``(n_pos, n_neg)`` prompts per label, in the order the model's ``prompts`` output
            holds them (``ctxray.models.zeroshot.prompt_texts``); needed when ``cfg.prompt > 0``.
    """

    def __init__(self, cfg: LossConfig, entity_ids: list[int] | None = None, special_ids: list[int] | None = None,
                 mask_id: int | None = None, vocab_size: int | None = None,
                 prompt_counts: list[tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.roco = RobustContrastiveLoss(cfg.correction)
        self.pkd = PairwiseKDLoss(cfg.pkd_kind)
        self.srkd = RelationKDLoss(cfg.srkd_tau)
        self.mlm = MaskedLMLoss()
        self.prompt = ReportPromptLoss(cfg.prompt_scale)
        self.prompt_counts = prompt_counts
        if cfg.prompt > 0 and not prompt_counts:
            raise ValueError("loss.prompt > 0 needs the zero-shot prompts' counts per label")
        self.entity_ids = entity_ids or []
        self.special_ids = special_ids or []
        self.mask_id, self.vocab_size = mask_id, vocab_size
        if cfg.mlm > 0 and (mask_id is None or vocab_size is None):
            raise ValueError("loss.mlm > 0 needs the tokenizer's mask id and vocabulary size")

    @property
    def active(self) -> list[str]:
        """Names of the terms with a non-zero weight."""
        return [t for t in TERMS if getattr(self.cfg, t) > 0]

    def mask_batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """MLM inputs for a batch: (masked ids (B, L), labels (B, L)); None when MLM is off."""
        if self.cfg.mlm <= 0:
            return None
        base = self.cfg.mlm_prob
        entity = min(1.0, base * self.cfg.mlm_entity_boost)
        return mask_entity_tokens(batch["input_ids"], self.entity_ids, self.mask_id, self.vocab_size,
                                  entity_prob=entity, base_prob=base, special_ids=self.special_ids,
                                  attention_mask=batch["attention_mask"])

    def _equivalence(self, labels: torch.Tensor | None,
                     ct_text: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(equivalent (N, N) bool or None, text similarity (N, N) or None) for the global batch."""
        cfg = self.cfg
        text_sim = None
        if ct_text is not None:
            t = torch.nn.functional.normalize(ct_text.float(), dim=-1)
            text_sim = t @ t.T
        if cfg.correction == "none":
            return None, None
        if cfg.false_negatives == "labels":
            if labels is None:
                raise ValueError("loss.false_negatives='labels' but the batch has no label vectors")
            return equivalence_from_labels(labels), text_sim
        if ct_text is None:
            raise ValueError("loss.false_negatives='text' needs the teacher's ct_text targets (data.retrieval)")
        return equivalence_from_text(ct_text, cfg.fn_threshold), text_sim

    def forward(self, out: dict[str, torch.Tensor], batch: dict[str, Any],
                mlm_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of one micro-batch.

        Args:
            out: the model's forward dict (``volume``, ``text``, ``logit_scale``, ``kd``, ``mlm_logits``,
                ``prompts``).
            batch: ``labels`` (B, 18), optionally ``teacher`` (B, Dt), ``ct_text`` (B, Dt) and
                ``report_labels`` (B, L) (the prompt term's targets, NaN where unknown).
            mlm_labels: (B, L) from ``mask_batch`` when MLM is on.

        Returns:
            (backward loss, logged terms). Every rank computes the same global-batch terms with the
            local rows carrying gradients; DDP averages gradients over ``W`` ranks, so the global
            terms enter the backward loss multiplied by ``W`` (exact single-process gradients), the
            per-rank MLM mean by 1. The temperature and the prompt embeddings are not sharded (every rank
            sees their whole gradient: the same prompts are encoded on every rank), so their gradients are
            scaled by ``1/W`` inside the loss. Logged terms are detached global values (MLM averaged over
            ranks) plus ``loss`` (their weighted sum) and ``logit_scale``, and monitors: ``volume_cos`` /
            ``text_cos`` (with the contrastive term) and ``pkd_shuffled``.
        """
        cfg = self.cfg
        world = dist.get_world_size() if is_distributed() else 1
        terms: dict[str, torch.Tensor] = {}
        monitors: dict[str, torch.Tensor] = {}
        need_teacher = cfg.distils
        kd = gather_features(out["kd"].float()) if need_teacher else None
        teacher = gather_features(batch["teacher"].float()) if need_teacher else None
        if cfg.roco > 0:
            labels = batch.get("labels")
            labels = gather_features(labels.float()) if labels is not None else None
            ct_text = batch.get("ct_text")
            ct_text = gather_features(ct_text.float()) if ct_text is not None else None
            equivalent, text_sim = self._equivalence(labels, ct_text)
            if equivalent is not None and "mirrored" in batch:
                equivalent = apart_from_mirrors(equivalent, gather_features(batch["index"]),
                                                gather_features(batch["mirrored"].long()))
            v, t = gather_features(out["volume"].float()), gather_features(out["text"].float())
            scale = _grad_scaled(out["logit_scale"].float(), 1.0 / world)
            terms["roco"] = self.roco(v, t, scale, equivalent, text_sim)
            with torch.no_grad():  # collapse monitors, on the already gathered global batch
                monitors = {"volume_cos": mean_pairwise_cosine(v.detach()),
                            "text_cos": mean_pairwise_cosine(t.detach())}
        if cfg.pkd > 0:
            terms["pkd"] = self.pkd(kd, teacher)
        if cfg.srkd > 0:
            terms["srkd"] = self.srkd(kd, teacher)
        if cfg.prompt > 0:
            if "prompts" not in out or "report_labels" not in batch:
                raise ValueError("loss.prompt > 0 needs prompts in the model output and report_labels in the batch")
            prompts = _grad_scaled(out["prompts"].float(), 1.0 / world)
            pos, neg = ensemble_directions(prompts, self.prompt_counts)
            terms["prompt"] = self.prompt(gather_features(out["text"].float()), pos, neg,
                                          gather_features(batch["report_labels"].float()))
        zero = out["volume"].new_zeros((), dtype=torch.float32)
        global_loss = sum((getattr(cfg, k) * v for k, v in terms.items()), zero)
        backward = global_loss * world
        if cfg.mlm > 0:
            if mlm_labels is None or "mlm_logits" not in out:
                raise ValueError("loss.mlm > 0 needs mlm_logits in the model output and mlm_labels")
            terms["mlm"] = self.mlm(out["mlm_logits"].float(), mlm_labels)
            backward = backward + cfg.mlm * terms["mlm"]
        logged = {k: v.detach() for k, v in terms.items()}
        if "mlm" in logged and world > 1:
            mlm = logged["mlm"].clone()
            dist.all_reduce(mlm)
            logged["mlm"] = mlm / world
        logged["loss"] = sum((getattr(cfg, k) * v for k, v in logged.items()), zero.detach())
        logged["logit_scale"] = out["logit_scale"].detach().float()
        logged.update(monitors)
        if cfg.pkd > 0:
            with torch.no_grad():
                logged.update(kd_controls(self.pkd, kd.detach(), teacher))
        return backward, logged


def apart_from_mirrors(equivalent: torch.Tensor, index: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """``equivalent`` with every pair and its left-right mirror (same dataset index, one mirrored) set apart.

    The two share their label vector (and nearly their report), so the false-negative correction would count them
    as positives of each other and cancel what the mirrored copies are for (``data.mirror_pairs``).

    Shape:
        equivalent: (N, N) bool; index, mirrored: (N,) -> (N, N) bool
    """
    mirror_of = (index[:, None] == index[None, :]) & (mirrored[:, None] != mirrored[None, :])
    return equivalent & ~mirror_of


def kd_controls(pkd: PairwiseKDLoss, kd: torch.Tensor, teacher: torch.Tensor) -> dict[str, torch.Tensor]:
    """``pkd_shuffled``: the student's PKD against the targets of other CTs of the batch (rolled by one). A
    student that matches its own CT's target goes below it; one that matches targets in general does not.
    (The other level, the best constant prediction, is fixed per run: ``setup.kd_mean_level``.)

    Shape:
        kd, teacher: (B, Dt) -> scalars
    """
    if kd.shape[0] < 2:
        return {"pkd_shuffled": kd.new_tensor(float("nan"))}
    return {"pkd_shuffled": pkd(kd, torch.roll(teacher, 1, dims=0))}


def mean_pairwise_cosine(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over pairs i != j (near 1: every sample mapped to one point).

    Shape:
        x: (B, E) -> scalar
    """
    b = x.shape[0]
    if b < 2:
        return x.new_tensor(float("nan"))
    x = torch.nn.functional.normalize(x, dim=1)
    sim = x @ x.T  # (B, B)
    return (sim.sum() - sim.diagonal().sum()) / (b * (b - 1))
