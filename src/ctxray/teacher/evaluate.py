"""How good the X-ray expert is at its own job: zero-shot AUC and report -> image retrieval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ctxray.labels import LabelSet
from ctxray.metrics import auroc_per_label, per_query_recall
from ctxray.models.zeroshot import prompt_ensembles, zero_shot_logits
from ctxray.teacher.base import Teacher
from ctxray.teacher.embed import embed_texts


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
    pos, neg = prompt_ensembles(lambda texts: embed_texts(teacher, texts, desc="prompts"), label_set, names)
    scores = zero_shot_logits(image_emb, pos, neg, 1.0).numpy()  # cos(image, pos) - cos(image, neg)
    y = labels[:, [label_set.index(n) for n in names]]
    out = dict(zip(names, auroc_per_label(y, scores).tolist()))
    finite = [v for v in out.values() if not math.isnan(v)]
    out["macro"] = float(np.mean(finite)) if finite else math.nan
    return out


def report_to_image_recall(text_emb: torch.Tensor, image_emb: torch.Tensor, reports: Sequence[str],
                           ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """Report -> image retrieval among the same N pairs.

    ``instance``: the report's own image is in the top k (tie-aware, :func:`ctxray.metrics.per_query_recall`).
    ``same_report``: an image whose report text is
    identical to the query's is in the top k (identical normal reports make the instance figure
    ambiguous). ``chance``: k/N for the instance figure.

    Shape:
        text_emb, image_emb: (N, Dt) normalised, row i of each from the same study
    """
    sim = text_emb @ image_emb.T  # (N, N)
    instance = per_query_recall(sim, tuple(ks))
    order = sim.argsort(dim=1, descending=True)
    _, group = np.unique(np.asarray(reports, dtype=object).astype(str), return_inverse=True)
    group_t = torch.from_numpy(group)
    out: dict[str, dict[str, float]] = {"instance": {}, "same_report": {}, "chance": {}}
    for k in ks:
        top = order[:, :k]  # (N, k)
        out["instance"][f"R@{k}"] = float(instance[f"R@{k}"].mean())
        out["same_report"][f"R@{k}"] = float((group_t[top] == group_t[:, None]).any(1).float().mean())
        out["chance"][f"R@{k}"] = min(1.0, k / len(reports))
    return out
