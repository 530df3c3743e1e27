"""Training data: the cache's pairs, a resumable distributed sampler, and batch collation.

Tokenisation and the teacher-target lookup happen in the collate function (never in ``forward``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ctxray.data.text import names_side, swap_sides

log = logging.getLogger(__name__)


def subset_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """All ``range(n)``, or a seeded sorted subset of ``limit`` of them."""
    if limit is None or limit >= n:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=gen)[:limit].tolist())


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle per epoch, equal shards) that can skip a prefix.

    Works without a process group (``num_replicas=1, rank=0``). After ``set_epoch(e, skip=k)`` the
    next iteration starts at this rank's ``k``-th sample of epoch ``e``: how ``--resume`` continues
    mid-epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:  # type: ignore[override]
        super().set_epoch(epoch)
        self.skip = int(skip)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class PairCollator:
    """Stack volumes and labels, tokenise reports, and look up the cached teacher targets.

    Args:
        tokenizer: ``tokenizer(texts, max_length) -> dict(input_ids, attention_mask)``.
        max_length: token budget per report.
        targets: a ``TeacherTargets`` (``lookup(ids, kind) -> (B, Dt)``) or None.
        target_kind: ``top1`` or ``topk_mean``: the target the KD terms distil.
        with_ct_text: also fetch the teacher's text embedding of each report (``ct_text``).
        id_map: optional id -> id remapping of the target rows (the shuffled-targets control).
        report_labels: optional id -> (L,) label vector of the report (the prompt term's targets, NaN where
            unknown); when given, batches hold ``report_labels`` (B, L).
        mirror: share of each batch given to mirrored pairs (:func:`mirror_pairs`); 0 leaves batches as drawn.
        seed: seeds the choice of the pairs to mirror (with the batch's dataset indices).
    """

    def __init__(self, tokenizer: Any, max_length: int, targets: Any = None, target_kind: str = "top1",
                 with_teacher: bool = False, with_ct_text: bool = False, id_map: dict[str, str] | None = None,
                 report_labels: dict[str, np.ndarray] | None = None, mirror: float = 0.0, seed: int = 0) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.targets, self.target_kind = targets, target_kind
        self.with_teacher, self.with_ct_text = with_teacher, with_ct_text
        self.id_map = id_map
        self.report_labels = report_labels
        self.mirror, self.seed = mirror, seed

    def _lookup(self, ids: list[str], kind: str) -> torch.Tensor:
        return torch.as_tensor(self.targets.lookup(ids, kind=kind), dtype=torch.float32)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Shape: returns volume (B,1,D,H,W), input_ids/attention_mask (B,L), labels (B,18),
        index (B,), slot (B,) for shard items, teacher/ct_text (B,Dt) and report_labels (B,L) when
        requested, ``mirrored`` (B,) bool with ``mirror`` > 0; ids: list[str]."""
        if self.mirror > 0:
            rng = np.random.default_rng([self.seed, 0x6D6972, *(int(it["index"]) for it in items)])
            items, _ = mirror_pairs(items, self.mirror, rng)
        ids = [str(it["id"]) for it in items]
        batch: dict[str, Any] = {
            "ids": ids,
            "volume": torch.stack([torch.as_tensor(it["volume"], dtype=torch.float32) for it in items]),
            "labels": torch.stack([torch.as_tensor(it["labels"], dtype=torch.float32) for it in items]),
            "index": torch.as_tensor([int(it["index"]) for it in items], dtype=torch.long),
        }
        batch.update(self.tokenizer([str(it["report"]) for it in items], max_length=self.max_length))
        if self.mirror > 0:
            batch["mirrored"] = torch.as_tensor([bool(it.get("mirrored", False)) for it in items])
        if "slot" in items[0]:  # a shard stream's position, counted to resume mid-epoch
            batch["slot"] = torch.as_tensor([int(it["slot"]) for it in items], dtype=torch.long)
        if self.with_teacher:
            keys = [self.id_map.get(i, i) for i in ids] if self.id_map else ids
            batch["teacher"] = self._lookup(keys, self.target_kind)
        if self.with_ct_text:
            batch["ct_text"] = self._lookup(ids, "ct_text")
        if self.report_labels is not None:
            batch["report_labels"] = torch.as_tensor(np.stack([self.report_labels[i] for i in ids]),
                                                     dtype=torch.float32)
        return batch


def mirror_pairs(items: Sequence[dict[str, Any]], share: float,
                 rng: np.random.Generator) -> tuple[list[dict[str, Any]], int]:
    """Put left-right mirror images of some pairs in the batch beside their originals: hard negatives for sides.

    The last ``int(share * B)`` places of the batch get mirrored copies of pairs drawn from the rest whose report
    names a side: the volume flipped along x (the array's last axis) and the report's "left" and "right"
    swapped (:func:`~ctxray.data.text.swap_sides`); labels, teacher targets and dataset index stay the source's.
    An original and its mirror differ only in which side each finding is on, so a contrastive loss can tell
    them apart only from the sides; plain batches rarely hold two scans whose reports differ only by a side. The
    batch size stays ``B`` (the pairs the copies displace are left out of this step; a shard stream's ``slot``
    stays with its place, so resuming counts the stream as drawn). Fewer copies are made when fewer of the
    first ``B - int(share * B)`` pairs name a side.

    Returns:
        (the batch's items, the number of mirrored copies in it). Copies carry ``mirrored=True``.
    """
    items = list(items)
    m = int(share * len(items))
    keep = len(items) - m
    sided = [i for i in range(keep) if names_side(str(items[i].get("report", "")))]
    chosen = sorted(rng.permutation(len(sided))[:m].tolist())
    for place, pick in zip(range(keep, len(items)), chosen):
        source = items[sided[pick]]
        copy = dict(source, volume=torch.flip(torch.as_tensor(source["volume"]), dims=[-1]),
                    report=swap_sides(str(source["report"])), mirrored=True)
        if "slot" in items[place]:
            copy["slot"] = items[place]["slot"]
        items[place] = copy
    return items, len(chosen)


def shuffled_id_map(ids: list[str], seed: int) -> dict[str, str]:
    """A seeded permutation of ids without fixed points (each CT gets another CT's teacher target)."""
    perm = np.random.default_rng(seed + 7919).permutation(len(ids))
    for i in range(len(ids) if len(ids) > 1 else 0):
        if perm[i] == i:  # swap with the neighbour: neither position is then fixed
            j = (i + 1) % len(ids)
            perm[i], perm[j] = perm[j], perm[i]
    return {a: ids[int(j)] for a, j in zip(ids, perm)}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch to ``device`` (non-blocking); other values stay."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
