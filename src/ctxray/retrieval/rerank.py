"""Making language-guided retrieval find the X-ray that shows what the CT report says.

Whole CT reports are mostly negations and CT-only findings; mean-pooled and matched against short
radiograph reports, they land on a few "hub" X-rays (on the demo world one radiograph was the top-1
match of 19% of CTs, almost all of them normal). Three levers, each a retrieval option:

- ``xray_query``: query with what a radiograph could show: the report's sentences that state an
  X-ray-visible finding (read by the negation-aware labeler), or a normal-study sentence when none does.
- ``label_rerank``: re-rank the text search's candidates by the Jaccard agreement of X-ray-visible label
  sets (the CT side read from the report text by the labeler, the gallery side from its label columns),
  ties broken by the text cosine and then at random, so identical normal reports do not all pick the
  same radiograph.
- ``hubness``: how concentrated the pairing is (the most CTs sharing one X-ray), recorded in
  ``quality.json``.
"""

from __future__ import annotations

import numpy as np
import torch

from ctxray.labeler import find_mentions
from ctxray.labels import load_labels
from ctxray.retrieval.search import jaccard_matrix

NORMAL_QUERY = "Normal chest radiograph. No acute cardiopulmonary process."


def xray_visible_columns() -> list[int]:
    """Indices of the X-ray-visible labels in ``labels.json`` order."""
    label_set = load_labels()
    return [label_set.index(n) for n in label_set.xray_visible_names]


def xray_query(report: str) -> str:
    """The sentences of a CT report that state (or hedge) an X-ray-visible finding, in reading order.

    Returns ``NORMAL_QUERY`` when the report states none.
    """
    return read_reports([report])[0][0]


def report_labels(reports: list[str]) -> np.ndarray:
    """The labeler's CT label matrix of report texts (hedged findings count as present).

    Shape:
        returns (N, 18) float32 in ``labels.json`` order
    """
    return read_reports(reports)[1]


def read_reports(reports: list[str]) -> tuple[list[str], np.ndarray]:
    """Both readings of CT reports from one labeler pass each (the labeler is the slow part): the
    X-ray-visible query (``xray_query``) and the label matrix (``report_labels``).

    Shape:
        returns (N queries, (N, 18) float32 in ``labels.json`` order)
    """
    label_set = load_labels()
    visible = set(label_set.xray_visible_names)
    column = {n: j for j, n in enumerate(label_set.names)}
    labels = np.zeros((len(reports), len(column)), dtype=np.float32)
    queries: list[str] = []
    for i, report in enumerate(reports):
        sentences: list[str] = []
        for m in find_mentions(report, "ct"):
            if m.status in ("positive", "uncertain") and m.label in column:
                labels[i, column[m.label]] = 1.0
                if m.label in visible and m.sentence not in sentences:
                    sentences.append(m.sentence)
        queries.append(" ".join(s.rstrip(".") + "." for s in sentences) if sentences else NORMAL_QUERY)
    return queries, labels


def label_rerank(scores: torch.Tensor, index: torch.Tensor, ct_labels: np.ndarray, gallery_labels: np.ndarray,
                 k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-rank text-search candidates by label agreement, then text cosine, then a seeded coin.

    Args:
        scores, index: the text search's candidates, best first (cosine, gallery index).
        ct_labels, gallery_labels: 0/1 label sets compared (e.g. the X-ray-visible columns).
        k: matches kept per CT.

    Returns:
        (Jaccard agreement, gallery index) of the k best, best first.

    Shape:
        scores, index (Q, C); ct_labels (Q, L), gallery_labels (N, L) -> (Q, k), (Q, k)
    """
    q, c = index.shape
    rng = np.random.default_rng(seed)
    jac = np.empty((q, c), dtype=np.float64)
    for i in range(q):
        jac[i] = jaccard_matrix(ct_labels[i:i + 1], gallery_labels[index[i].numpy()])[0]
    # lexicographic: Jaccard gaps among 18 labels are >= 1/18; cosines lie in [-1, 1]; the coin in [0, 1e-6)
    key = jac + 1e-3 * scores.double().numpy() + 1e-6 * rng.random((q, c))
    order = np.argsort(-key, axis=1, kind="stable")[:, :min(k, c)]
    picked = torch.from_numpy(np.take_along_axis(index.numpy(), order, axis=1))
    return torch.from_numpy(np.take_along_axis(jac, order, axis=1)).float(), picked


def hubness(index: torch.Tensor | np.ndarray, n_gallery: int) -> dict[str, float]:
    """How concentrated top-1 matches are.

    Returns:
        ``max_ct_per_xray`` (the largest number of CTs sharing one top-1 X-ray), ``max_share`` (that
        over the number of CTs), ``distinct_top1`` (X-rays used at least once) and ``n_gallery``.
    """
    idx = np.asarray(index)
    top1 = idx[:, 0] if idx.ndim == 2 else idx
    counts = np.bincount(top1, minlength=n_gallery)
    return {"max_ct_per_xray": int(counts.max()), "max_share": float(counts.max() / max(1, len(top1))),
            "distinct_top1": int((counts > 0).sum()), "n_gallery": int(n_gallery)}


def normal_to_abnormal(ct_labels: np.ndarray, gallery_labels: np.ndarray, index: torch.Tensor | np.ndarray,
                       columns: list[int]) -> float:
    """Share of CTs with no X-ray-visible finding whose top-1 X-ray has one (NaN without such CTs)."""
    idx = np.asarray(index)
    top1 = idx[:, 0] if idx.ndim == 2 else idx
    ct_normal = ~(np.asarray(ct_labels)[:, columns] > 0.5).any(1)
    xr_abnormal = (np.asarray(gallery_labels)[top1][:, columns] > 0.5).any(1)
    return float(xr_abnormal[ct_normal].mean()) if ct_normal.any() else float("nan")
