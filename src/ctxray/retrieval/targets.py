"""The retrieval folder's files: ``pairs.csv``, ``targets.safetensors`` and ``targets.json``.

The teacher targets are the matched X-rays' teacher *image* embeddings (top-1 and the mean of the top-k,
each L2-normalised), cached once so training never runs the teacher.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ctxray.data.ids import ct_id
from ctxray.utils.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

PAIRS_CSV = "pairs.csv"
TARGETS_TENSORS = "targets.safetensors"
TARGETS_JSON = "targets.json"
QUALITY_JSON = "quality.json"


@dataclass
class TeacherTargets:
    """Cached teacher targets, one row per CT, loaded from a retrieval folder.

    Args:
        ct_ids: row order. tensors: ``top1``, ``topk_mean``, ``ct_text`` (N, Dt) normalised.
        teacher: the teacher's fingerprint. k: neighbours averaged in ``topk_mean``.
    """

    ct_ids: list[str]
    tensors: dict[str, torch.Tensor]
    teacher: str
    k: int
    meta: dict

    def __post_init__(self) -> None:
        self._row = {cid: i for i, cid in enumerate(self.ct_ids)}

    @property
    def dim(self) -> int:
        return int(self.tensors["top1"].shape[1])

    def centred(self) -> TeacherTargets:
        """The image targets (``top1``, ``topk_mean``) minus the gallery's mean image embedding, re-normalised.

        The gallery mean is the one retrieval stored (``gallery_mean``); a folder written before it was
        stored falls back to the mean of its own top-1 targets (logged).
        """
        mean = self.tensors.get("gallery_mean")
        if mean is None:
            log.warning("teacher targets have no gallery_mean (an older retrieval folder): centring on the mean "
                        "of the %d top-1 targets instead", len(self.ct_ids))
            mean = self.tensors["top1"].mean(0, keepdim=True)
        tensors = dict(self.tensors)
        for kind in ("top1", "topk_mean"):
            tensors[kind] = torch.nn.functional.normalize(self.tensors[kind] - mean.reshape(1, -1), dim=-1)
        return TeacherTargets(self.ct_ids, tensors, self.teacher, self.k, {**self.meta, "centred": True})

    def lookup(self, ids: list[str], kind: str = "top1") -> torch.Tensor:
        """Targets for CT ids (file suffixes ignored).

        Shape:
            returns (len(ids), Dt) float32

        Raises:
            KeyError: an id without targets (names it) or an unknown kind.
        """
        if kind not in self.tensors:
            raise KeyError(f"unknown target kind {kind!r}; have {sorted(self.tensors)}")
        try:
            rows = [self._row[ct_id(i)] for i in ids]
        except KeyError as err:
            raise KeyError(f"no teacher target for CT id {err.args[0]!r} (run ctxray retrieve on it)") from None
        return self.tensors[kind][rows]


def load_targets(path: str | Path) -> TeacherTargets:
    """Read ``targets.safetensors`` + ``targets.json`` of a retrieval folder."""
    path = Path(path)
    meta_path, data_path = path / TARGETS_JSON, path / TARGETS_TENSORS
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(str(data_path))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read teacher targets ({err})") from err
    n = len(meta["ct_ids"])
    for name, t in tensors.items():
        if name != "gallery_mean" and t.shape[0] != n:
            raise ValueError(f"{data_path}: {name} has {t.shape[0]} rows but targets.json lists {n} CT ids")
    return TeacherTargets(meta["ct_ids"], tensors, meta["teacher"], int(meta["k"]), meta)


def write_pairs_csv(path: Path, ct_ids: list[str], xray_ids: list[str], index: torch.Tensor,
                    scores: torch.Tensor) -> None:
    """``ct_id, rank, xray_id, score`` rows, rank 1 the best."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ct_id", "rank", "xray_id", "score"])
            for i, cid in enumerate(ct_ids):
                for r in range(index.shape[1]):
                    w.writerow([cid, r + 1, xray_ids[int(index[i, r])], f"{float(scores[i, r]):.6f}"])

    atomic_write(path, write)


def write_targets(out: Path, ct_ids: list[str], index: torch.Tensor, gallery_image: torch.Tensor,
                  ct_text: torch.Tensor, meta: dict) -> None:
    """Write ``targets.safetensors`` (top1, topk_mean, ct_text: normalised; gallery_mean) and ``targets.json``.

    Shape:
        index (N, k); gallery_image (G, Dt) normalised; ct_text (N, Dt) normalised
    """
    matched = gallery_image[index]  # (N, k, Dt)
    tensors = {
        "top1": matched[:, 0].contiguous(),
        "topk_mean": torch.nn.functional.normalize(matched.mean(1), dim=-1).contiguous(),
        "ct_text": ct_text.contiguous(),
        "gallery_mean": gallery_image.mean(0, keepdim=True).contiguous(),  # (1, Dt), for centring
    }
    atomic_write(out / TARGETS_TENSORS, lambda p: save_file(tensors, str(p)))
    body = {"ct_ids": ct_ids, "k": int(index.shape[1]), "dim": int(gallery_image.shape[1]), **meta}
    atomic_write_text(out / TARGETS_JSON, json.dumps(body, indent=1))
