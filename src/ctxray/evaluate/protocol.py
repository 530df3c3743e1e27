"""Evaluation protocols on score matrices: per volume, per scan, thresholds, bootstrap intervals.

Rules (stated in every ``metrics.json``):

- Thresholds: per label, the score maximising Youden's J = TPR - FPR on the threshold split (the
  validation split, or the evaluated split itself when no other is given, which is optimistic for
  F1/accuracy/precision/recall but leaves AUROC untouched). A label with one class there gets 0.5.
- Per-scan protocol: a scan's score is the maximum over its reconstructions; its label is positive
  if any reconstruction's label is (reconstructions of one scan share a report, so they agree).
- Intervals: 95 % percentile bootstrap, 1000 replicates by default, resampling scans (all
  reconstructions of a drawn scan come along), thresholds held fixed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ctxray.evaluate.bootstrap import bootstrap_ci, cluster_rows
from ctxray.metrics import classification_metrics, macro, youden_thresholds

log = logging.getLogger(__name__)

METRICS = ("auroc", "f1", "accuracy", "precision", "recall")
THRESHOLD_RULE = "per label, the score maximising Youden's J = TPR - FPR (predict positive if score >= t)"
SCAN_RULE = "scan score = max over its reconstructions; scan label = max (any positive) over them"
BOOTSTRAP_RULE = "95% percentile bootstrap over scans (cluster bootstrap), thresholds fixed"


def aggregate_by_scan(scan_ids: Sequence[str], y: np.ndarray, scores: np.ndarray
                      ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Collapse reconstructions to scans: max score, any-positive label (NaN only if all unknown).

    Args:
        scan_ids: scan of each row.
        y: 0/1/NaN labels per row.
        scores: scores per row.

    Returns:
        (scan ids in first-appearance order, labels per scan, scores per scan).

    Shape:
        y, scores: (N, L) -> (S, L)
    """
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if len(scan_ids) != y.shape[0] or y.shape != scores.shape:
        raise ValueError(f"per-scan: {len(scan_ids)} scan ids for labels {y.shape} and scores {scores.shape}")
    groups = cluster_rows(np.asarray(scan_ids), len(scan_ids))
    names = [str(scan_ids[g[0]]) for g in groups]
    s_scan = np.stack([scores[g].max(0) for g in groups])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        y_scan = np.stack([np.nanmax(y[g], axis=0) for g in groups])
        y_min = np.stack([np.nanmin(y[g], axis=0) for g in groups])
    disagree = int(((y_scan != y_min) & ~np.isnan(y_scan)).sum())  # NaN != NaN must not count
    if disagree:
        log.warning("per-scan: %d scan-label pairs have reconstructions with different labels; "
                    "taking any-positive", disagree)
    return names, y_scan, s_scan


def metric_block(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray, names: Sequence[str],
                 clusters: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Point estimates and bootstrap intervals of every metric, per label and macro.

    Args:
        y: 0/1/NaN labels.
        scores: higher = more likely positive.
        thresholds: per label (``youden_thresholds`` on the threshold split).
        names: label names, in column order.
        clusters: resampling unit per row (scan ids); None for independent rows.
        n_boot: bootstrap replicates (0: no intervals).
        seed: bootstrap seed.

    Returns:
        ``{"macro": {m: v}, "macro_ci95": {m: [lo, hi]}, "per_label": {name: {m: v, m + "_ci95": [lo, hi],
        "threshold", "n", "n_pos"}}, "n": N}``; NaN where undefined.

    Shape:
        y, scores: (N, L); thresholds: (L,)
    """
    y = np.asarray(y, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    point = classification_metrics(y, scores, thresholds)

    def stat(idx: np.ndarray) -> dict[str, np.ndarray]:
        m = classification_metrics(y[idx], scores[idx], thresholds)
        out = {k: v for k, v in m.items()}
        out.update({f"macro_{k}": np.asarray(macro(v)) for k, v in m.items()})
        return out

    ci = bootstrap_ci(stat, len(y), n_boot=n_boot, seed=seed, clusters=clusters) if n_boot > 0 else {}
    nan2 = np.full(2, np.nan)
    per_label = {}
    for j, name in enumerate(names):
        known = ~np.isnan(y[:, j])
        entry: dict[str, object] = {"n": int(known.sum()), "n_pos": int(np.nansum(y[:, j])),
                                    "threshold": float(thresholds[j])}
        for m in METRICS:
            entry[m] = float(point[m][j])
            entry[f"{m}_ci95"] = ci[m][j].tolist() if m in ci else nan2.tolist()
        per_label[name] = entry
    return {
        "macro": {m: macro(point[m]) for m in METRICS},
        "macro_ci95": {m: (ci[f"macro_{m}"].tolist() if f"macro_{m}" in ci else nan2.tolist()) for m in METRICS},
        "per_label": per_label,
        "n": int(len(y)),
    }


def zero_shot_protocols(y: np.ndarray, scores: np.ndarray, scan_ids: Sequence[str], names: Sequence[str],
                        thr_y: np.ndarray | None = None, thr_scores: np.ndarray | None = None,
                        thr_scan_ids: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-volume and per-scan metrics with thresholds chosen on a threshold split.

    Args:
        y, scores, scan_ids: the evaluated split.
        names: label names.
        thr_y, thr_scores, thr_scan_ids: the threshold split; None: the evaluated split itself.
        n_boot, seed: bootstrap settings.

    Returns:
        The per-volume ``metric_block`` plus ``per_scan`` (a ``metric_block`` over scans) and
        ``thresholds`` (rule, per-volume and per-scan values, whether they came from the same split).

    Shape:
        y, scores: (N, L); thr_y, thr_scores: (M, L)
    """
    same = thr_y is None
    if same:
        thr_y, thr_scores, thr_scan_ids = y, scores, scan_ids
    t_vol = youden_thresholds(thr_y, thr_scores)
    _, ty_scan, ts_scan = aggregate_by_scan(thr_scan_ids, thr_y, thr_scores)
    t_scan = youden_thresholds(ty_scan, ts_scan)
    out = metric_block(y, scores, t_vol, names, clusters=scan_ids, n_boot=n_boot, seed=seed)
    scans, y_scan, s_scan = aggregate_by_scan(scan_ids, y, scores)
    out["per_scan"] = metric_block(y_scan, s_scan, t_scan, names, clusters=None, n_boot=n_boot, seed=seed)
    out["per_scan"]["rule"] = SCAN_RULE
    out["thresholds"] = {
        "rule": THRESHOLD_RULE,
        "same_split": same,
        "note": ("thresholds were chosen on the evaluated split itself (optimistic for F1/accuracy/"
                 "precision/recall; AUROC does not depend on them)" if same else
                 "thresholds were chosen on a separate split and applied unchanged"),
        "per_volume": dict(zip(names, map(float, t_vol))),
        "per_scan": dict(zip(names, map(float, t_scan))),
    }
    out["bootstrap"] = {"rule": BOOTSTRAP_RULE, "n_boot": n_boot, "seed": seed}
    return out


@dataclass
class ThresholdBlock:
    """The ``zero_shot.thresholds`` block of ``ctxray evaluate``'s ``metrics.json`` (:func:`zero_shot_protocols`).

    Args:
        rule: how they were chosen. split: the split they were chosen on ("?" if not recorded).
        note: whether that split was the evaluated one. per_volume, per_scan: label -> threshold.
    """

    rule: str
    split: str
    note: str
    per_volume: dict[str, float]
    per_scan: dict[str, float]


def read_threshold_block(metrics: Any) -> ThresholdBlock | None:
    """The thresholds of an evaluation's ``metrics.json`` content; None when it has no per-volume thresholds."""
    zs = metrics.get("zero_shot") if isinstance(metrics, dict) else None
    th = zs.get("thresholds") if isinstance(zs, dict) else None
    if not (isinstance(th, dict) and isinstance(th.get("per_volume"), dict)):
        return None

    def numbers(d: Any) -> dict[str, float]:
        return {k: float(v) for k, v in d.items() if isinstance(v, int | float)} if isinstance(d, dict) else {}

    return ThresholdBlock(str(th.get("rule", "per-label thresholds")), str(th.get("split", "?")),
                          str(th.get("note", "")), numbers(th["per_volume"]), numbers(th.get("per_scan")))
