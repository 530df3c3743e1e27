"""Is the retrieved X-ray about the same thing as the CT? The quality table of a pairing, and the IU text check.

Agreement is measured on the X-ray-visible labels only (what a radiograph and its report can
share with a CT): ``exact`` is the fraction of CTs whose matched X-ray has the identical set of
X-ray-visible positive labels, ``jaccard`` the mean Jaccard index of the two sets (two empty sets,
both normal, count as 1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ctxray.labels import load_labels
from ctxray.retrieval.rerank import normal_to_abnormal
from ctxray.retrieval.search import exact_topk, label_oracle_pairs, random_pairs
from ctxray.teacher.embed import embed_texts

log = logging.getLogger(__name__)


def label_agreement(ct_labels: np.ndarray, gallery_labels: np.ndarray, index: torch.Tensor | np.ndarray,
                    columns: Sequence[int]) -> dict[str, float]:
    """Agreement of each CT with its top-1 match on ``columns`` (the X-ray-visible labels).

    Shape:
        ct_labels (Q, L), gallery_labels (N, L), index (Q, k) or (Q,)

    Returns:
        ``exact`` (identical label sets), ``jaccard`` (mean), ``n``.
    """
    idx = np.asarray(index)
    idx = idx[:, 0] if idx.ndim == 2 else idx
    a = np.asarray(ct_labels)[:, list(columns)] > 0.5
    b = np.asarray(gallery_labels)[idx][:, list(columns)] > 0.5
    inter, union = (a & b).sum(1), (a | b).sum(1)
    jac = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return {"exact": float((a == b).all(1).mean()), "jaccard": float(jac.mean()), "n": int(len(a))}


def agreement_table(ct_labels: np.ndarray, gallery_labels: np.ndarray, text_index: torch.Tensor,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Label agreement of text retrieval against random pairing and the label oracle (X-ray-visible labels)."""
    label_set = load_labels()
    cols = [label_set.index(n) for n in label_set.xray_visible_names]
    rand = random_pairs(len(ct_labels), len(gallery_labels), 1, seed=seed)
    _, oracle = label_oracle_pairs(ct_labels[:, cols], gallery_labels[:, cols], 1, seed=seed)
    return {
        "text": label_agreement(ct_labels, gallery_labels, text_index, cols),
        "random": label_agreement(ct_labels, gallery_labels, rand, cols),
        "label_oracle": label_agreement(ct_labels, gallery_labels, oracle, cols),
    }


def _set_agreement(sets: list[frozenset[str]], match: np.ndarray) -> float:
    return float(np.mean([sets[i] == sets[j] for i, j in enumerate(match)]))


def iu_text_check(teacher, reports: list, seed: int = 0, batch_size: int = 128) -> dict:
    """For each IU report, does its nearest *other* report (teacher text cosine) carry the same MeSH labels?

    A check of the text side only (the IU images are not in the wheel). Two label sets are compared:
    the MeSH major terms as written (lower-cased, e.g. ``cardiomegaly/mild``) and their headings
    (``cardiomegaly``). Baselines: a random other report; the oracle, which picks a report with the
    same set whenever one exists (its figure is the fraction of reports whose set occurs twice).

    Args:
        teacher: any ``Teacher`` (only ``encode_text`` is used).
        reports: ``IUReport`` list (empty reports should be dropped first).

    Returns:
        ``{"n", "teacher", "full": {text, random, oracle}, "heads": {...}}``.
    """
    emb = embed_texts(teacher, [r.report for r in reports], batch_size=batch_size, desc="IU reports")
    _, idx = exact_topk(emb, emb, 2)  # (N, 2): self first unless duplicates tie
    n = len(reports)
    self_first = idx[:, 0] == torch.arange(n)
    nearest = torch.where(self_first, idx[:, 1], idx[:, 0]).numpy()
    rng = np.random.default_rng(seed)
    rand = (np.arange(n) + rng.integers(1, n, size=n)) % n  # a uniformly random other report
    out: dict = {"n": n, "teacher": teacher.fingerprint()[:16], "kind": teacher.name}
    for name, sets in (("full", [frozenset(t.lower() for t in r.mesh_major) for r in reports]),
                       ("heads", [r.major_heads for r in reports])):
        counts: dict[frozenset[str], int] = {}
        for s in sets:
            counts[s] = counts.get(s, 0) + 1
        out[name] = {
            "text": _set_agreement(sets, nearest),
            "random": _set_agreement(sets, rand),
            "oracle": float(np.mean([counts[s] > 1 for s in sets])),
        }
    log.info("IU check (%s): %s", teacher.name, out)
    return out


def warn_if_near_random(table: dict[str, dict[str, float]], margin: float = 0.05) -> None:
    """Warn when the written pairing agrees with the CTs' own labels hardly better than random pairing."""
    got, rand = table["written"]["exact"], table["random"]["exact"]
    if got < rand + margin:
        log.warning("retrieval: the pairs agree with the CTs' own labels about as often as random pairs (exact "
                    "X-ray-visible label set %.3f vs %.3f at random; label oracle %.3f): the teacher targets "
                    "carry little about each CT", got, rand, table["label_oracle"]["exact"])


def quality_table(ct_labels: np.ndarray, gallery_labels: np.ndarray, text_index: torch.Tensor,
                  written_index: torch.Tensor, columns: Sequence[int], seed: int = 0) -> dict:
    """The label-agreement part of ``quality.json`` (warns when the written pairs are near random).

    Args:
        text_index: the text search's matches; written_index: the pairs written (after re-ranking, or another
            pairing mode). columns: the X-ray-visible label columns.

    Returns:
        ``agreement_top1`` (``agreement_table`` of the text search plus ``written``) and ``normal_to_abnormal``.

    Shape:
        ct_labels (Q, L), gallery_labels (N, L), text_index / written_index (Q, k)
    """
    agreement = agreement_table(ct_labels, gallery_labels, text_index, seed)
    agreement["written"] = agreement_table(ct_labels, gallery_labels, written_index, seed)["text"]
    table = {"agreement_top1": agreement,
             "normal_to_abnormal": normal_to_abnormal(ct_labels, gallery_labels, written_index, columns)}
    warn_if_near_random(agreement)
    return table
