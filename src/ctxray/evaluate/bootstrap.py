"""Percentile bootstrap confidence intervals, resampling whole clusters (scans) when given.

CT-RATE reconstructs one scan several times; the reconstructions are not independent samples, so by
default the resampling unit is the scan (a cluster bootstrap): each replicate draws scans with
replacement and takes all of their rows. With one row per cluster it is the ordinary bootstrap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

Stat = Callable[[np.ndarray], dict[str, np.ndarray]]
"""Maps row indices (with repeats) to named statistics (floats or arrays)."""


def cluster_rows(clusters: Sequence[str] | np.ndarray | None, n: int) -> list[np.ndarray]:
    """Row indices of each cluster, in first-appearance order (each row its own cluster when None)."""
    if clusters is None:
        return [np.array([i]) for i in range(n)]
    clusters = np.asarray(clusters)
    if clusters.shape != (n,):
        raise ValueError(f"clusters has shape {clusters.shape}, expected ({n},)")
    groups: dict[object, list[int]] = {}
    for i, c in enumerate(clusters.tolist()):
        groups.setdefault(c, []).append(i)
    return [np.asarray(g) for g in groups.values()]


def bootstrap_ci(stat: Stat, n: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 clusters: Sequence[str] | np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Percentile bootstrap intervals of every statistic ``stat`` returns.

    Args:
        stat: function of row indices returning ``{name: value}`` (float or array); NaN values (e.g.
            AUROC of a replicate that drew one class only) are left out of that entry's percentiles.
        n: number of rows.
        n_boot: number of replicates.
        seed: RNG seed (same seed, same intervals).
        alpha: 1 - coverage (0.05 gives 95 % intervals).
        clusters: cluster id per row (resampling unit); None for independent rows.

    Returns:
        ``{name: array of shape value.shape + (2,)}`` holding (low, high); NaN where no replicate
        gave a finite value.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}: need at least one replicate")
    groups = cluster_rows(clusters, n)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {}
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), size=len(groups))
        idx = np.concatenate([groups[g] for g in pick])
        for name, value in stat(idx).items():
            draws.setdefault(name, []).append(np.asarray(value, dtype=np.float64))
    out: dict[str, np.ndarray] = {}
    for name, values in draws.items():
        arr = np.stack(values)  # (n_boot, ...)
        finite = np.isfinite(arr)
        lo_hi = np.full(arr.shape[1:] + (2,), np.nan)
        flat, flat_ok = arr.reshape(n_boot, -1), finite.reshape(n_boot, -1)
        res = lo_hi.reshape(-1, 2)
        for k in range(flat.shape[1]):
            vals = flat[flat_ok[:, k], k]
            if vals.size:
                res[k] = np.percentile(vals, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        out[name] = res.reshape(lo_hi.shape)
        n_bad = int((~finite).any(axis=tuple(range(1, arr.ndim))).sum()) if arr.ndim > 1 else int((~finite).sum())
        if n_bad:
            log.debug("bootstrap %s: %d/%d replicates had undefined values", name, n_bad, n_boot)
    return out
