"""Report <-> volume retrieval metrics: recall at K and median rank, both directions.

Row i of the volume embeddings and row i of the report embeddings are a true pair. Ranks are
*expected ranks under random tie-breaking*: with g candidates scoring strictly higher than the true
one and e others tying with it, the true item's position is uniform on g+1 .. g+e+1, so its expected
rank is ``g + 1 + e/2`` and ``P(rank <= K) = clip((K - g) / (e + 1), 0, 1)``. This matters because
identical reports (e.g. normal patients) give identical embeddings: a collapsed model that embeds
everything alike scores chance, not perfect recall.
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)


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
    greater, ties = tie_aware_ranks(sim)
    out: dict[str, float] = {}
    for k in ks:
        out[f"R@{k}"] = float(np.clip((k - greater) / (ties + 1), 0.0, 1.0).mean())
    ranks = greater + 1 + ties / 2
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(ranks.mean())
    out["n"] = int(len(ranks))
    return out


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


def _per_query(sim: torch.Tensor, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    greater, ties = tie_aware_ranks(sim)
    out = {f"R@{k}": np.clip((k - greater) / (ties + 1), 0.0, 1.0) for k in ks}
    out["rank"] = greater + 1 + ties / 2
    return out


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
    from ctxray.evaluate.bootstrap import bootstrap_ci

    out = bidirectional_retrieval(volume_emb, text_emb, ks)
    if n_boot <= 0:
        return out
    sim = volume_emb.double() @ text_emb.double().T
    for direction, s in (("volume_to_report", sim), ("report_to_volume", sim.T)):
        q = _per_query(s, ks)

        def stat(idx: np.ndarray, q: dict[str, np.ndarray] = q) -> dict[str, np.ndarray]:
            res = {name: np.asarray(v[idx].mean()) for name, v in q.items() if name != "rank"}
            res["median_rank"] = np.asarray(np.median(q["rank"][idx]))
            return res

        ci = bootstrap_ci(stat, len(q["rank"]), n_boot=n_boot, seed=seed, clusters=clusters)
        out[direction].update({f"{name}_ci95": v.tolist() for name, v in ci.items()})
    return out
