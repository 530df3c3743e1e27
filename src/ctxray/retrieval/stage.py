"""The retrieval stage: for each CT report, the X-rays whose reports the expert reads most alike.

For CT report ``r_i`` the match is ``argmax_k cos(T_txt(r_i), T_txt(r_k))`` over the gallery's
reports; the matched X-rays' teacher *image* embeddings (top-1 and the mean of the top-k, each
L2-normalised) become the distillation targets, cached once so training never runs the teacher.
Search and pairing modes: :mod:`ctxray.retrieval.search`; the files: :mod:`ctxray.retrieval.targets`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ctxray.data.cachedir import manifest_path, read_manifest
from ctxray.data.ctrate import read_ctrate
from ctxray.data.ids import ct_id
from ctxray.retrieval.quality import quality_table
from ctxray.retrieval.rerank import (
    hubness,
    label_rerank,
    read_reports,
    report_labels,
    xray_visible_columns,
)
from ctxray.retrieval.search import FaissKind, IndexKind, Pairing, center_embeddings, pair
from ctxray.retrieval.targets import PAIRS_CSV, QUALITY_JSON, write_pairs_csv, write_targets
from ctxray.teacher import load_teacher
from ctxray.teacher.embed import embed_gallery, embed_texts
from ctxray.utils.io import atomic_write_text

log = logging.getLogger(__name__)

Query = Literal["xray", "report"]
Rerank = Literal["labels", "none"]


@dataclass
class RetrievalConfig:
    """What ``ctxray retrieve`` does (its flags, one field each).

    Args:
        teacher: the expert (its image tower gives the targets; its text tower ranks unless
            ``text_teacher`` is given).
        ct: preprocess cache or CT-RATE root.
        gallery: X-ray gallery folder.
        out: output folder.
        k: neighbours kept (``topk_mean`` averages them).
        index: exact or faiss search (``faiss_kind`` ivf or hnsw).
        pairing: text (the method), random or label_oracle.
        text_teacher: a separate (text-only) expert for ranking, e.g. a CXR-BERT folder.
        gallery_split: restrict the gallery to one split.
        cache_dir: gallery-embedding cache (default ``out/cache``).
        seed: seed of random pairing and tie-breaks.
        center: match on mean-centred text embeddings (see ``center_embeddings``).
        query: what of each CT report is matched: ``xray``, its sentences stating X-ray-visible findings
            (``ctxray.retrieval.rerank.xray_query``), or the whole ``report``.
        rerank: ``labels`` re-ranks the ``candidates`` best text matches by X-ray-visible label agreement
            (CT side read from the report by the labeler; ``ctxray.retrieval.rerank.label_rerank``); ``none``
            keeps the text order. Text pairing only.
        candidates: text matches re-ranked per CT.
    """

    teacher: str
    ct: str | Path
    gallery: str | Path
    out: str | Path
    k: int = 5
    index: IndexKind = "exact"
    pairing: Pairing = "text"
    text_teacher: str | None = None
    gallery_split: str | None = None
    cache_dir: str | Path | None = None
    seed: int = 0
    faiss_kind: FaissKind = "ivf"
    center: bool = True
    query: Query = "xray"
    rerank: Rerank = "labels"
    candidates: int = 256


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
    ids, reports, labels = [], [], []
    if manifest_path(source).is_file():
        for row in read_manifest(source):
            ids.append(ct_id(str(row["id"])))
            reports.append(str(row.get("report") or ""))
            labels.append(row.get("labels"))
    else:
        for split in ("train", "valid"):
            try:
                records = read_ctrate(source, split, missing="keep")
            except FileNotFoundError as err:
                log.warning("CT-RATE split %s skipped: %s", split, err)
                continue
            ids += [ct_id(r.volume_name) for r in records]
            reports += [r.report for r in records]
            labels += [None if r.labels is None else r.labels.tolist() for r in records]
        if not ids:
            raise FileNotFoundError(f"{source}: neither a preprocess cache (manifest.jsonl) nor a CT-RATE root")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: duplicate CT ids")
    has_labels = all(lab is not None for lab in labels)
    return CTReports(ids, reports, np.asarray(labels, dtype=np.float32) if has_labels and labels else None)


def retrieve(cfg: RetrievalConfig) -> dict:
    """Run the retrieval stage and write ``pairs.csv``, ``targets.safetensors``, ``targets.json``, ``quality.json``.

    Returns:
        The quality summary (also in ``quality.json``).
    """
    out = Path(cfg.out)
    cache = Path(cfg.cache_dir) if cfg.cache_dir is not None else out / "cache"
    teacher = load_teacher(cfg.teacher)
    if not teacher.has_image_tower:
        raise ValueError(f"{cfg.teacher}: a text-only teacher cannot give image targets; "
                         "pass it as --text-teacher with a CLIP-style --teacher")
    ranker = load_teacher(cfg.text_teacher) if cfg.text_teacher else teacher
    ct = read_ct_reports(cfg.ct)
    gallery = embed_gallery(teacher, cfg.gallery, split=cfg.gallery_split, cache_dir=cache)
    gallery_rank = gallery if ranker is teacher else embed_gallery(ranker, cfg.gallery, cfg.gallery_split, cache,
                                                                   False)
    ct_text = embed_texts(teacher, ct.reports, desc="CT reports")
    read_queries, read_labels = read_reports(ct.reports)
    q_texts = ct.reports if cfg.query == "report" else read_queries
    q_match = (ct_text if (ranker is teacher and cfg.query == "report")
               else embed_texts(ranker, q_texts, desc="queries"))
    g_match = gallery_rank.text
    if cfg.center:
        q_match, g_match = center_embeddings(q_match), center_embeddings(g_match)
    cols = xray_visible_columns()
    if cfg.pairing == "text" and cfg.rerank == "labels":
        c_scores, c_idx = pair(q_match, g_match, max(cfg.k, cfg.candidates), "text", cfg.index, cfg.faiss_kind)
        gal_labels = _gallery_labels(gallery)
        scores, idx = label_rerank(c_scores, c_idx, read_labels[:, cols], gal_labels[:, cols], cfg.k, cfg.seed)
    else:
        scores, idx = pair(q_match, g_match, cfg.k, cfg.pairing, cfg.index, cfg.faiss_kind, ct.labels,
                           gallery.labels, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    write_pairs_csv(out / PAIRS_CSV, ct.ids, gallery.ids, idx, scores)
    meta = {"teacher": teacher.fingerprint(), "ranker": ranker.fingerprint(), "pairing": cfg.pairing,
            "index": cfg.index if cfg.index == "exact" else f"faiss-{cfg.faiss_kind}", "gallery": str(cfg.gallery),
            "gallery_size": len(gallery.ids), "centered": cfg.center, "query": cfg.query, "rerank": cfg.rerank}
    write_targets(out, ct.ids, idx, gallery.image, ct_text, meta)
    quality: dict = {"pairing": cfg.pairing, "n_ct": len(ct.ids), "n_gallery": len(gallery.ids),
                     "centered": cfg.center, "query": cfg.query, "rerank": cfg.rerank if cfg.pairing == "text" else
                     "none", "hubness": hubness(idx, len(gallery.ids))}
    if ct.labels is not None:
        text_index = idx if cfg.pairing == "text" else pair(q_match, g_match, 1, "text", cfg.index, cfg.faiss_kind)[1]
        quality.update(quality_table(ct.labels, gallery.labels, text_index, idx, cols, cfg.seed))
    atomic_write_text(out / QUALITY_JSON, json.dumps(quality, indent=2))
    log.info("retrieval: %d CTs -> %d X-rays (%s, %s, query %s, rerank %s); agreement %s; hubness %s", len(ct.ids),
             len(gallery.ids), cfg.pairing, cfg.index, cfg.query, cfg.rerank, quality.get("agreement_top1"),
             quality["hubness"])
    return quality


def _gallery_labels(gallery) -> np.ndarray:
    """The gallery's label columns; rows without labels (NaN) are read from their report by the labeler."""
    labels = np.asarray(gallery.labels, dtype=np.float32).copy()
    missing = np.isnan(labels).any(axis=1)
    if missing.any():
        log.info("gallery: %d rows without labels; reading them from their reports", int(missing.sum()))
        labels[missing] = report_labels([gallery.reports[i] for i in np.flatnonzero(missing)])
    return labels
