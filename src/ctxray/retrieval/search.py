"""Search and pairing: which gallery items each CT is matched to.

Search is exact (blocked matrix products with a running top-k: memory bounded by ``block_elems``
floats whatever the sizes) or approximate (FAISS IVF-Flat or HNSW, inner product; its recall against
exact is measured in tests and ``bench/bench_retrieval.py``; random vectors are its worst case).
Pairing modes: ``text`` (the method), ``random`` (seeded control) and ``label_oracle`` (gallery
items ranked by Jaccard agreement of X-ray-visible labels, ties broken at random: the ceiling).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

Pairing = Literal["text", "random", "label_oracle"]
IndexKind = Literal["exact", "faiss"]
FaissKind = Literal["ivf", "hnsw"]


def jaccard_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Jaccard index of 0/1 label rows (1 where both rows are empty).

    Shape:
        a (Q, L), b (N, L) -> (Q, N) float32
    """
    a = (np.asarray(a) > 0.5).astype(np.float32)
    b = (np.asarray(b) > 0.5).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float32)


def exact_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int,
               block_elems: int = 1 << 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner products by blocked matrix products with a running top-k.

    Args:
        queries, gallery: float32 rows (normalise them first for cosine similarity).
        k: neighbours per query (capped at the gallery size).
        block_elems: most similarity entries held at once (default 2**25 floats = 128 MiB).

    Returns:
        (scores, indices), best first.

    Shape:
        queries (Q, D), gallery (N, D) -> scores (Q, k) float32, indices (Q, k) int64
    """
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"dimension mismatch: queries {tuple(queries.shape)} vs gallery {tuple(gallery.shape)}")
    n = gallery.shape[0]
    k = min(k, n)
    g_block = max(k, min(n, block_elems // max(1, min(queries.shape[0], 1024))))
    q_block = max(1, block_elems // g_block)
    scores = torch.empty(queries.shape[0], k)
    index = torch.empty(queries.shape[0], k, dtype=torch.long)
    for qs in range(0, queries.shape[0], q_block):
        q = queries[qs:qs + q_block]
        best_s = torch.full((q.shape[0], k), -math.inf)
        best_i = torch.zeros((q.shape[0], k), dtype=torch.long)
        for gs in range(0, n, g_block):
            sim = q @ gallery[gs:gs + g_block].T  # (q, g)
            s, i = sim.topk(min(k, sim.shape[1]), dim=1)
            del sim  # free the block before the next product allocates its own
            cat_s, cat_i = torch.cat([best_s, s], 1), torch.cat([best_i, i + gs], 1)
            best_s, pos = cat_s.topk(k, dim=1)
            best_i = cat_i.gather(1, pos)
        scores[qs:qs + q.shape[0]], index[qs:qs + q.shape[0]] = best_s, best_i
    return scores, index


def faiss_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int, kind: FaissKind = "ivf",
               nlist: int | None = None, nprobe: int | None = None, hnsw_m: int = 32, ef_search: int = 128,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-k inner products with FAISS.

    Args:
        kind: ``ivf`` (IVF-Flat: k-means lists, scans ``nprobe`` of them) or ``hnsw`` (graph, HNSW-Flat).
        nlist: IVF lists (default ``4 * sqrt(N)``, at most ``N / 39`` so k-means has data).
        nprobe: IVF lists searched per query (default ``nlist // 4``).
        hnsw_m, ef_search: HNSW graph degree and search breadth.
        seed: k-means seed.

    Shape:
        queries (Q, D), gallery (N, D) -> scores (Q, k), indices (Q, k) int64
    """
    import faiss

    g = np.ascontiguousarray(gallery.numpy(), dtype=np.float32)
    q = np.ascontiguousarray(queries.numpy(), dtype=np.float32)
    n, d = g.shape
    k = min(k, n)
    if kind == "ivf":
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(g)
        index.nprobe = nprobe or max(1, nlist // 4)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(ef_search, k)
    else:
        raise ValueError(f"unknown FAISS index kind {kind!r}; use ivf or hnsw")
    index.add(g)
    scores, ids = index.search(q, k)
    return torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64))


def search(queries: torch.Tensor, gallery: torch.Tensor, k: int, index: IndexKind = "exact",
           **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch to ``exact_topk`` or ``faiss_topk``."""
    if index == "exact":
        return exact_topk(queries, gallery, k, **kw)
    if index == "faiss":
        return faiss_topk(queries, gallery, k, **kw)
    raise ValueError(f"unknown index {index!r}; use exact or faiss")


def center_embeddings(x: torch.Tensor) -> torch.Tensor:
    """Subtract the set's mean embedding and re-normalise.

    CT reports and X-ray reports differ in style and length, so each set's embeddings share a common
    offset; without removing it every CT report lands near the same few "hub" X-ray reports. Centring
    each side on its own mean before the cosine removes that offset (matching only, never the targets).

    Shape:
        x: (N, D) -> (N, D) unit rows
    """
    return torch.nn.functional.normalize(x - x.mean(0, keepdim=True), dim=-1)


def random_pairs(n_queries: int, n_gallery: int, k: int, seed: int = 0) -> torch.Tensor:
    """k distinct random gallery indices per query (the control). Shape: (Q, k) int64."""
    gen = torch.Generator().manual_seed(seed)
    k = min(k, n_gallery)
    return torch.stack([torch.randperm(n_gallery, generator=gen)[:k] for _ in range(n_queries)])


def label_oracle_pairs(ct_labels: np.ndarray, gallery_labels: np.ndarray, k: int,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery items ranked by Jaccard agreement of label sets (empty with empty counts as 1), random tie-breaks.

    Shape:
        ct_labels (Q, L), gallery_labels (N, L) 0/1 -> scores (Q, k), indices (Q, k)
    """
    rng = np.random.default_rng(seed)
    jac = torch.from_numpy(jaccard_matrix(ct_labels, gallery_labels))  # (Q, N)
    jitter = torch.from_numpy(rng.random(jac.shape, dtype=np.float32)) * 1e-3  # < any Jaccard gap of 18 labels
    _, idx = (jac + jitter).topk(min(k, jac.shape[1]), dim=1)
    return jac.gather(1, idx), idx


def pair(q_match: torch.Tensor, g_match: torch.Tensor, k: int, pairing: Pairing = "text",
         index: IndexKind = "exact", faiss_kind: FaissKind = "ivf", ct_labels: np.ndarray | None = None,
         gallery_labels: np.ndarray | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The k gallery matches of each CT under a pairing mode.

    Shape:
        q_match (Q, D), g_match (N, D) unit rows; labels (Q, L), (N, L) -> scores (Q, k), indices (Q, k)
    """
    if pairing == "text":
        return search(q_match, g_match, k, index=index, **({"kind": faiss_kind} if index == "faiss" else {}))
    if pairing == "random":
        idx = random_pairs(len(q_match), len(g_match), k, seed)
        return (q_match[:, None, :] * g_match[idx]).sum(-1), idx  # the matching cosine, for the record
    if pairing == "label_oracle":
        if ct_labels is None or gallery_labels is None:
            raise ValueError("label_oracle pairing needs CT and gallery labels")
        return label_oracle_pairs(ct_labels, gallery_labels, k, seed)
    raise ValueError(f"unknown pairing {pairing!r}; use text, random or label_oracle")
