"""Language-guided retrieval: for each CT report, the X-rays whose reports the expert reads most alike.

For CT report ``r_i`` the match is ``argmax_k cos(T_txt(r_i), T_txt(r_k))`` over the gallery's
reports; the matched X-rays' teacher *image* embeddings (top-1 and the mean of the top-k, each
L2-normalised) become the distillation targets, cached once so training never runs the teacher.

Search is exact (blocked matrix products with a running top-k: memory bounded by ``block_elems``
floats whatever the sizes) or approximate (FAISS IVF-Flat or HNSW, inner product; its recall against
exact is measured in tests and ``bench/bench_retrieval.py``; random vectors are its worst case).
Pairing modes: ``text`` (the method), ``random`` (seeded control) and ``label_oracle`` (gallery
items ranked by Jaccard agreement of X-ray-visible labels, ties broken at random: the ceiling).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ctxray.rerank import (
    hubness,
    label_rerank,
    normal_to_abnormal,
    read_reports,
    report_labels,
    xray_visible_columns,
)

log = logging.getLogger(__name__)

Pairing = Literal["text", "random", "label_oracle"]
Query = Literal["xray", "report"]
Rerank = Literal["labels", "none"]
IndexKind = Literal["exact", "faiss"]
FaissKind = Literal["ivf", "hnsw"]
_ID_SUFFIXES = (".nii.gz", ".nii", ".npz", ".npy")


def canonical_id(name: str) -> str:
    """A CT id without its file suffix: ``train_1_a_1.nii.gz`` -> ``train_1_a_1`` (manifest ids are unchanged)."""
    for suffix in _ID_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# -- search ---------------------------------------------------------------------------------------
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
    from ctxray.teacher.quality import jaccard_matrix

    rng = np.random.default_rng(seed)
    jac = torch.from_numpy(jaccard_matrix(ct_labels, gallery_labels))  # (Q, N)
    jitter = torch.from_numpy(rng.random(jac.shape, dtype=np.float32)) * 1e-3  # < any Jaccard gap of 18 labels
    _, idx = (jac + jitter).topk(min(k, jac.shape[1]), dim=1)
    return jac.gather(1, idx), idx


# -- targets --------------------------------------------------------------------------------------
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
            rows = [self._row[canonical_id(i)] for i in ids]
        except KeyError as err:
            raise KeyError(f"no teacher target for CT id {err.args[0]!r} (run ctxray retrieve on it)") from None
        return self.tensors[kind][rows]


def load_targets(path: str | Path) -> TeacherTargets:
    """Read ``targets.safetensors`` + ``targets.json`` of a retrieval folder."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_path, data_path = path / "targets.json", path / "targets.safetensors"
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
    from ctxray.utils.io import atomic_write

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
    from safetensors.torch import save_file

    from ctxray.utils.io import atomic_write, atomic_write_text

    matched = gallery_image[index]  # (N, k, Dt)
    tensors = {
        "top1": matched[:, 0].contiguous(),
        "topk_mean": torch.nn.functional.normalize(matched.mean(1), dim=-1).contiguous(),
        "ct_text": ct_text.contiguous(),
        "gallery_mean": gallery_image.mean(0, keepdim=True).contiguous(),  # (1, Dt), for centring
    }
    atomic_write(out / "targets.safetensors", lambda p: save_file(tensors, str(p)))
    body = {"ct_ids": ct_ids, "k": int(index.shape[1]), "dim": int(gallery_image.shape[1]), **meta}
    atomic_write_text(out / "targets.json", json.dumps(body, indent=1))


# -- the stage ------------------------------------------------------------------------------------
@dataclass
class CTReports:
    """CT ids (canonical), report texts and label matrix (None if any CT lacks labels)."""

    ids: list[str]
    reports: list[str]
    labels: np.ndarray | None


def read_ct_reports(source: str | Path) -> CTReports:
    """CT reports from a preprocess cache (``manifest.jsonl`` or its folder) or a CT-RATE root (all splits).

    Raises:
        FileNotFoundError: neither a manifest nor a CT-RATE root. ValueError: a bad manifest line.
    """
    source = Path(source)
    manifest = source if source.suffix == ".jsonl" else source / "manifest.jsonl"
    ids, reports, labels = [], [], []
    if manifest.is_file():
        for line_no, line in enumerate(manifest.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ids.append(canonical_id(str(row["id"])))
                reports.append(str(row.get("report") or ""))
            except (json.JSONDecodeError, KeyError) as err:
                raise ValueError(f"{manifest}:{line_no}: bad manifest line ({err})") from err
            labels.append(row.get("labels"))
    else:
        from ctxray.data.ctrate import read_ctrate

        for split in ("train", "valid"):
            try:
                records = read_ctrate(source, split, missing="keep")
            except FileNotFoundError as err:
                log.warning("CT-RATE split %s skipped: %s", split, err)
                continue
            ids += [canonical_id(r.volume_name) for r in records]
            reports += [r.report for r in records]
            labels += [None if r.labels is None else r.labels.tolist() for r in records]
        if not ids:
            raise FileNotFoundError(f"{source}: neither a preprocess cache (manifest.jsonl) nor a CT-RATE root")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: duplicate CT ids")
    has_labels = all(lab is not None for lab in labels)
    return CTReports(ids, reports, np.asarray(labels, dtype=np.float32) if has_labels and labels else None)


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


def retrieve(teacher_spec: str, ct_source: str | Path, gallery_dir: str | Path, out: str | Path, k: int = 5,
             index: IndexKind = "exact", pairing: Pairing = "text", text_teacher: str | None = None,
             gallery_split: str | None = None, cache_dir: str | Path | None = None, seed: int = 0,
             faiss_kind: FaissKind = "ivf", center: bool = True, query: Query = "xray",
             rerank: Rerank = "labels", candidates: int = 256) -> dict:
    """Run the retrieval stage and write ``pairs.csv``, ``targets.safetensors``, ``targets.json``, ``quality.json``.

    Args:
        teacher_spec: the expert (its image tower gives the targets; its text tower ranks unless
            ``text_teacher`` is given).
        ct_source: preprocess cache or CT-RATE root.
        gallery_dir: X-ray gallery folder.
        out: output folder.
        k: neighbours kept (``topk_mean`` averages them).
        index: exact or faiss search (``faiss_kind`` ivf or hnsw).
        pairing: text (the method), random or label_oracle.
        text_teacher: a separate (text-only) expert for ranking, e.g. a CXR-BERT folder.
        gallery_split: restrict the gallery to one split.
        cache_dir: gallery-embedding cache (default ``out/cache``).
        center: match on mean-centred text embeddings (see ``center_embeddings``).
        query: what of each CT report is matched: ``xray``, its sentences stating X-ray-visible findings
            (``ctxray.rerank.xray_query``), or the whole ``report``.
        rerank: ``labels`` re-ranks the ``candidates`` best text matches by X-ray-visible label agreement
            (CT side read from the report by the labeler; ``ctxray.rerank.label_rerank``); ``none`` keeps
            the text order. Text pairing only.

    Returns:
        The quality summary (also in ``quality.json``).
    """
    from ctxray.teacher import load_teacher
    from ctxray.teacher.embed import embed_gallery, embed_texts
    from ctxray.teacher.quality import agreement_table
    from ctxray.utils.io import atomic_write_text

    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else out / "cache"
    teacher = load_teacher(teacher_spec)
    if not teacher.has_image_tower:
        raise ValueError(f"{teacher_spec}: a text-only teacher cannot give image targets; "
                         "pass it as --text-teacher with a CLIP-style --teacher")
    ranker = load_teacher(text_teacher) if text_teacher else teacher
    ct = read_ct_reports(ct_source)
    gallery = embed_gallery(teacher, gallery_dir, split=gallery_split, cache_dir=cache)
    gallery_rank = gallery if ranker is teacher else embed_gallery(ranker, gallery_dir, gallery_split, cache, False)
    ct_text = embed_texts(teacher, ct.reports, desc="CT reports")
    read_queries, read_labels = read_reports(ct.reports)
    q_texts = ct.reports if query == "report" else read_queries
    q_match = ct_text if (ranker is teacher and query == "report") else embed_texts(ranker, q_texts, desc="queries")
    g_match = gallery_rank.text
    if center:
        q_match, g_match = center_embeddings(q_match), center_embeddings(g_match)
    cols = xray_visible_columns()
    if pairing == "text" and rerank == "labels":
        c_scores, c_idx = pair(q_match, g_match, max(k, candidates), "text", index, faiss_kind)
        gal_labels = _gallery_labels(gallery)
        scores, idx = label_rerank(c_scores, c_idx, read_labels[:, cols], gal_labels[:, cols], k, seed)
    else:
        scores, idx = pair(q_match, g_match, k, pairing, index, faiss_kind, ct.labels, gallery.labels, seed)
    out.mkdir(parents=True, exist_ok=True)
    write_pairs_csv(out / "pairs.csv", ct.ids, gallery.ids, idx, scores)
    meta = {"teacher": teacher.fingerprint(), "ranker": ranker.fingerprint(), "pairing": pairing,
            "index": index if index == "exact" else f"faiss-{faiss_kind}", "gallery": str(gallery_dir),
            "gallery_size": len(gallery.ids), "centered": center, "query": query, "rerank": rerank}
    write_targets(out, ct.ids, idx, gallery.image, ct_text, meta)
    quality: dict = {"pairing": pairing, "n_ct": len(ct.ids), "n_gallery": len(gallery.ids), "centered": center,
                     "query": query, "rerank": rerank if pairing == "text" else "none",
                     "hubness": hubness(idx, len(gallery.ids))}
    if ct.labels is not None:
        text_index = idx if pairing == "text" else pair(q_match, g_match, 1, "text", index, faiss_kind)[1]
        quality["agreement_top1"] = agreement_table(ct.labels, gallery.labels, text_index, seed)
        quality["agreement_top1"]["written"] = agreement_table(ct.labels, gallery.labels, idx, seed)["text"]
        quality["normal_to_abnormal"] = normal_to_abnormal(ct.labels, gallery.labels, idx, cols)
        _warn_if_near_random(quality["agreement_top1"])
    atomic_write_text(out / "quality.json", json.dumps(quality, indent=2))
    log.info("retrieval: %d CTs -> %d X-rays (%s, %s, query %s, rerank %s); agreement %s; hubness %s", len(ct.ids),
             len(gallery.ids), pairing, index, query, rerank, quality.get("agreement_top1"), quality["hubness"])
    return quality


def _gallery_labels(gallery) -> np.ndarray:
    """The gallery's label columns; rows without labels (NaN) are read from their report by the labeler."""
    labels = np.asarray(gallery.labels, dtype=np.float32).copy()
    missing = np.isnan(labels).any(axis=1)
    if missing.any():
        log.info("gallery: %d rows without labels; reading them from their reports", int(missing.sum()))
        labels[missing] = report_labels([gallery.reports[i] for i in np.flatnonzero(missing)])
    return labels


def _warn_if_near_random(table: dict[str, dict[str, float]], margin: float = 0.05) -> None:
    """Warn when the written pairing agrees with the CTs' own labels hardly better than random pairing."""
    got, rand = table["written"]["exact"], table["random"]["exact"]
    if got < rand + margin:
        log.warning("retrieval: the pairs agree with the CTs' own labels about as often as random pairs (exact "
                    "X-ray-visible label set %.3f vs %.3f at random; label oracle %.3f): the teacher targets "
                    "carry little about each CT", got, rand, table["label_oracle"]["exact"])
