"""Metrics of scores, shared by every stage that scores (train, teacher, evaluate, generate).

Classification (multi-label): ``y`` is ``(N, L)`` with 0/1 entries and NaN for "unknown" (such entries are
left out of that label's metrics); ``scores`` is ``(N, L)``, higher meaning more likely positive. A metric
that is undefined for a label (a single class present; no predicted positives for precision) is NaN for
AUROC and 0 for precision/recall/F1 (scikit-learn's ``zero_division=0``). Macro averages are the mean over
labels where the metric is defined (``nanmean``).

Retrieval: row i of a similarity matrix is a query whose true candidate is column i. Ranks are
*expected ranks under random tie-breaking*: with g candidates scoring strictly higher than the true
one and e others tying with it, the true item's position is uniform on g+1 .. g+e+1, so its expected
rank is ``g + 1 + e/2`` and ``P(rank <= K) = clip((K - g) / (e + 1), 0, 1)``. This matters because
identical reports (e.g. normal patients) give identical embeddings: a collapsed model that embeds
everything alike scores chance, not perfect recall.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

BINARY_METRICS = ("f1", "accuracy", "precision", "recall")
DEFAULT_KS = (1, 5, 10)


def _check(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1 and scores.ndim == 1:
        y, scores = y[:, None], scores[:, None]
    if y.shape != scores.shape or y.ndim != 2:
        raise ValueError(f"labels {y.shape} and scores {scores.shape} must both be (N, L)")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    known = y[~np.isnan(y)]
    if known.size and not np.isin(known, (0.0, 1.0)).all():
        raise ValueError("labels must be 0, 1 or NaN")
    return y, scores


def auroc_per_label(y: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Area under the ROC curve per label (Mann-Whitney U with mid-ranks for ties).

    Args:
        y: 0/1 labels, NaN = unknown (ignored).
        scores: higher = more likely positive.

    Returns:
        AUROC per label; NaN where a label has fewer than two classes among known entries.

    Shape:
        y, scores: (N, L); output: (L,)
    """
    y, scores = _check(y, scores)
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        yj, sj = y[known, j], scores[known, j]
        n_pos = int(yj.sum())
        n_neg = yj.size - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(sj)  # average ranks for ties
        out[j] = (ranks[yj == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def roc_points(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of one label: false/true positive rates at each distinct score threshold.

    Rule: predict positive when ``score >= threshold``. The first point is (0, 0) at threshold +inf.

    Args:
        y: 0/1 labels with both classes present (NaN entries are dropped).
        scores: higher = more likely positive.

    Returns:
        (fpr, tpr, thresholds), thresholds decreasing.

    Shape:
        y, scores: (N,); outputs: (K+1,) for K distinct scores
    """
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    known = ~np.isnan(y)
    y, scores = y[known], scores[known]
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_points: need both classes")
    order = np.argsort(-scores, kind="mergesort")
    s, yy = scores[order], y[order]
    last_of_run = np.r_[np.diff(s) != 0, True]  # index of the last item of each tied run
    tp = np.cumsum(yy)[last_of_run]
    fp = np.cumsum(1 - yy)[last_of_run]
    fpr = np.r_[0.0, fp / n_neg]
    tpr = np.r_[0.0, tp / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last_of_run]]


def youden_thresholds(y: np.ndarray, scores: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-label threshold maximising Youden's J = TPR - FPR (predict positive when score >= t).

    Ties in J go to the highest threshold (fewest positives). A label with one class gets ``default``.

    Shape:
        y, scores: (N, L); output: (L,)
    """
    y, scores = _check(y, scores)
    out = np.full(y.shape[1], float(default))
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        yj = y[known, j]
        if yj.size == 0 or yj.min() == yj.max():
            continue
        fpr, tpr, thr = roc_points(yj, scores[known, j])
        k = int(np.argmax(tpr[1:] - fpr[1:])) + 1  # skip the +inf point
        out[j] = thr[k]
    return out


def binary_metrics(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """F1, accuracy, precision and recall per label at fixed thresholds (``score >= t`` is positive).

    Args:
        y: 0/1 labels, NaN = unknown (ignored).
        scores: higher = more likely positive.
        thresholds: one per label.

    Returns:
        ``{"f1", "accuracy", "precision", "recall"}`` -> (L,) arrays; precision/recall/F1 are 0
        where undefined; every metric is NaN for a label without known entries.

    Shape:
        y, scores: (N, L); thresholds: (L,)
    """
    y, scores = _check(y, scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (y.shape[1],):
        raise ValueError(f"thresholds {thresholds.shape} do not match {y.shape[1]} labels")
    known = ~np.isnan(y)
    pred = scores >= thresholds[None, :]
    pos = y == 1
    tp = (pred & pos & known).sum(0).astype(np.float64)
    fp = (pred & ~pos & known).sum(0).astype(np.float64)
    fn = (~pred & pos & known).sum(0).astype(np.float64)
    n = known.sum(0).astype(np.float64)
    tn = n - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        accuracy = (tp + tn) / n
    empty = n == 0
    result = {"f1": f1, "accuracy": accuracy, "precision": precision, "recall": recall}
    for v in result.values():
        v[empty] = np.nan
    return result


def macro(values: np.ndarray) -> float:
    """Mean over labels where the metric is defined (NaN if none is)."""
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        return float("nan")
    return float(np.nanmean(values))


def classification_metrics(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC plus thresholded metrics per label (see ``auroc_per_label`` and ``binary_metrics``).

    Returns:
        ``{"auroc", "f1", "accuracy", "precision", "recall"}`` -> (L,) arrays.
    """
    out = {"auroc": auroc_per_label(y, scores)}
    out.update(binary_metrics(y, scores, thresholds))
    return out


def tie_aware_ranks(sim: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Counts of candidates above and tying with each query's true match (the diagonal).

    Args:
        sim: similarity of query i to candidate j; the true candidate of query i is j = i.

    Returns:
        (greater, ties): per query, how many candidates score strictly higher / equal (excluding itself).

    Shape:
        sim: (N, N); outputs: (N,)
    """
    s = (sim if isinstance(sim, torch.Tensor) else torch.as_tensor(np.asarray(sim))).double()
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity matrix must be square (N, N), got {tuple(s.shape)}")
    s = torch.round(s, decimals=9)  # identical texts must tie exactly, whatever the matmul's summation order
    true = s.diagonal().unsqueeze(1)  # (N, 1)
    greater = (s > true).sum(1)
    ties = (s == true).sum(1) - 1
    return greater.numpy(), ties.numpy()


def retrieval_metrics(sim: np.ndarray | torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Recall at K and median (expected) rank for queries = rows of ``sim``.

    Returns:
        ``{"R@1": ..., "R@5": ..., "R@10": ..., "median_rank": ..., "mean_rank": ..., "n": N}``.

    Shape:
        sim: (N, N)
    """
    q = per_query_recall(sim, ks)
    ranks = q.pop("rank")
    out: dict[str, float] = {name: float(v.mean()) for name, v in q.items()}
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(ranks.mean())
    out["n"] = int(len(ranks))
    return out


def per_query_recall(sim: np.ndarray | torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per query: the probability that the true candidate is in the top K (``R@K``) and its expected ``rank``.

    Shape:
        sim: (N, N); each output: (N,)
    """
    greater, ties = tie_aware_ranks(sim)
    out = {f"R@{k}": np.clip((k - greater) / (ties + 1), 0.0, 1.0) for k in ks}
    out["rank"] = greater + 1 + ties / 2
    return out
