"""How good the X-ray expert is at its own job: zero-shot AUC and report -> image retrieval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ctxray.labels import LabelSet
from ctxray.teacher.base import Teacher
from ctxray.teacher.embed import embed_texts


def prompt_directions(teacher: Teacher, label_set: LabelSet, names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative prompt-ensemble embeddings for each label (mean of normalised, renormalised).

    Shape:
        returns pos (L, Dt), neg (L, Dt)
    """
    pos, neg = [], []
    for name in names:
        p, n = label_set.prompts(name)
        pos.append(F.normalize(embed_texts(teacher, p, desc="prompts").mean(0), dim=-1))
        neg.append(F.normalize(embed_texts(teacher, n, desc="prompts").mean(0), dim=-1))
    return torch.stack(pos), torch.stack(neg)


def zero_shot_scores(image_emb: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Per-label score ``cos(image, pos) - cos(image, neg)`` (monotone in the softmax probability).

    Shape:
        image_emb (N, Dt) normalised, pos/neg (L, Dt) -> (N, L)
    """
    return image_emb @ pos.T - image_emb @ neg.T


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when ``y`` has a single class."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, score))


def zero_shot_auc(teacher: Teacher, image_emb: torch.Tensor, labels: np.ndarray, label_set: LabelSet,
                  names: Sequence[str] | None = None) -> dict[str, float]:
    """Zero-shot AUC per label with the label set's prompt ensembles.

    Args:
        image_emb: normalised image embeddings (N, Dt).
        labels: 0/1 array (N, len(label_set)).
        names: labels to score; default the X-ray-visible ones.

    Returns:
        ``{name: auc}`` (NaN where the split has one class) plus ``"macro"`` over the finite values.
    """
    names = list(names or label_set.xray_visible_names)
    pos, neg = prompt_directions(teacher, label_set, names)
    scores = zero_shot_scores(image_emb, pos, neg).numpy()
    out = {n: auroc(labels[:, label_set.index(n)], scores[:, i]) for i, n in enumerate(names)}
    finite = [v for v in out.values() if not math.isnan(v)]
    out["macro"] = float(np.mean(finite)) if finite else math.nan
    return out


def report_to_image_recall(text_emb: torch.Tensor, image_emb: torch.Tensor, reports: Sequence[str],
                           ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Report -> image retrieval among the same N pairs.

    ``instance``: the report's own image is in the top k. ``same_report``: an image whose report text is
    identical to the query's is in the top k (identical normal reports make the instance figure
    ambiguous). ``chance``: k/N for the instance figure.

    Shape:
        text_emb, image_emb: (N, Dt) normalised, row i of each from the same study
    """
    n = len(reports)
    sim = text_emb @ image_emb.T  # (N, N)
    order = sim.argsort(dim=1, descending=True)
    _, group = np.unique(np.asarray(reports, dtype=object).astype(str), return_inverse=True)
    group_t = torch.from_numpy(group)
    out: dict[str, dict[str, float]] = {"instance": {}, "same_report": {}, "chance": {}}
    for k in ks:
        top = order[:, :k]  # (N, k)
        out["instance"][f"R@{k}"] = float((top == torch.arange(n)[:, None]).any(1).float().mean())
        out["same_report"][f"R@{k}"] = float((group_t[top] == group_t[:, None]).any(1).float().mean())
        out["chance"][f"R@{k}"] = min(1.0, k / n)
    return out
