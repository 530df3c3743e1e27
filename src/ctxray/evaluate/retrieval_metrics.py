"""Report <-> volume retrieval metrics in both directions, with bootstrap intervals.

Row i of the volume embeddings and row i of the report embeddings are a true pair; recall at K and
ranks are the tie-aware ones of :mod:`ctxray.metrics`.
"""

from __future__ import annotations

import numpy as np
import torch

from ctxray.evaluate.bootstrap import bootstrap_ci
from ctxray.metrics import DEFAULT_KS, per_query_recall, retrieval_metrics


def bidirectional_retrieval(volume_emb: torch.Tensor, text_emb: torch.Tensor,
                            ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """Volume->report and report->volume retrieval over one split by cosine similarity.

    Args:
        volume_emb, text_emb: L2-normalised; row i of each is a true pair.

    Returns:
        ``{"volume_to_report": {...}, "report_to_volume": {...}}`` as ``retrieval_metrics``.

    Shape:
        volume_emb, text_emb: (N, E)
    """
    if volume_emb.shape != text_emb.shape:
        raise ValueError(f"volume {tuple(volume_emb.shape)} and report {tuple(text_emb.shape)} embeddings differ")
    sim = volume_emb.double() @ text_emb.double().T  # (N volumes, N reports)
    return {"volume_to_report": retrieval_metrics(sim, ks), "report_to_volume": retrieval_metrics(sim.T, ks)}


def retrieval_with_ci(volume_emb: torch.Tensor, text_emb: torch.Tensor, ks: tuple[int, ...] = DEFAULT_KS,
                      n_boot: int = 1000, seed: int = 0, clusters: list[str] | None = None) -> dict[str, dict]:
    """``bidirectional_retrieval`` plus 95 % bootstrap intervals over queries (the gallery stays fixed).

    Args:
        volume_emb, text_emb: L2-normalised; row i of each is a true pair.
        ks: the K of recall at K.
        n_boot: bootstrap replicates (0: no intervals).
        seed: bootstrap seed.
        clusters: resampling unit per query (scan ids); None for independent queries.

    Returns:
        Per direction: ``R@K``, ``median_rank``, ``mean_rank``, ``n`` and ``<metric>_ci95`` = [lo, hi].

    Shape:
        volume_emb, text_emb: (N, E)
    """
    out = bidirectional_retrieval(volume_emb, text_emb, ks)
    if n_boot <= 0:
        return out
    sim = volume_emb.double() @ text_emb.double().T
    for direction, s in (("volume_to_report", sim), ("report_to_volume", sim.T)):
        q = per_query_recall(s, ks)

        def stat(idx: np.ndarray, q: dict[str, np.ndarray] = q) -> dict[str, np.ndarray]:
            res = {name: np.asarray(v[idx].mean()) for name, v in q.items() if name != "rank"}
            res["median_rank"] = np.asarray(np.median(q["rank"][idx]))
            return res

        ci = bootstrap_ci(stat, len(q["rank"]), n_boot=n_boot, seed=seed, clusters=clusters)
        out[direction].update({f"{name}_ci95": v.tolist() for name, v in ci.items()})
    return out
