"""Data for report generation: cached volumes, their report sections, and encoder features.

The decoder writes a report as one token sequence ``"<findings> impression: <impression>"``;
:func:`split_sections` turns generated text back into the two sections. When the cache has no
section fields (the manifest holds the joined ``report``), CT-RATE-layout reports can supply them
(``ctrate_root``); otherwise the whole report is the Findings and the Impression stays empty.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctxray.data.cachedir import read_manifest, volume_path
from ctxray.data.ctrate import read_ctrate
from ctxray.data.ids import ct_id
from ctxray.data.spec import PreprocessSpec
from ctxray.data.text import clean_field, report_text
from ctxray.generate.decoder import pool_feature_map
from ctxray.labeler import label_matrix
from ctxray.utils.progress import progress

log = logging.getLogger(__name__)

IMPRESSION_MARKER = "impression:"
_MARKER_RE = re.compile(r"\bimpression\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class ReportItem:
    """One volume with its reference report.

    Args:
        id: the cache id.
        findings, impression: the reference sections ('' when unknown).
        report: ``report_text(findings, impression)`` (the text every stage compares).
        path: the cached volume file, or None for a volume given otherwise.
    """

    id: str
    findings: str
    impression: str
    report: str
    path: Path | None


def format_target(findings: str, impression: str) -> str:
    """The decoder's training text for one report."""
    findings, impression = clean_field(findings), clean_field(impression)
    if not impression:
        return findings
    return f"{findings} {IMPRESSION_MARKER} {impression}".strip()


def split_sections(text: str) -> tuple[str, str]:
    """(Findings, Impression) of a generated report: the text before/after the first marker."""
    parts = _MARKER_RE.split(text, maxsplit=1)
    if len(parts) == 1:
        return clean_field(text), ""
    return clean_field(parts[0]), clean_field(_MARKER_RE.sub(" ", parts[1]))


def _ctrate_sections(root: str | Path, splits: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Cache id -> (findings, impression) from a CT-RATE-layout folder."""
    out: dict[str, tuple[str, str]] = {}
    for split in splits:
        for rec in read_ctrate(root, split, missing="keep"):
            out[ct_id(rec.volume_name)] = (rec.findings, rec.impression)
    return out


def read_items(cache: str | Path, split: str | None, ctrate_root: str | Path | None = None,
               limit: int | None = None) -> list[ReportItem]:
    """Volumes of one cache split with their reference report sections.

    Args:
        cache: a preprocess cache (``C/manifest.jsonl``, ``C/volumes/{id}.npy``).
        split: manifest split to keep (None: all).
        ctrate_root: optional CT-RATE-layout root to read Findings/Impression separately.
        limit: keep the first ``limit`` rows (manifest order).

    Raises:
        ValueError: the split has no rows with a report.
    """

    rows = [r for r in read_manifest(cache, split) if clean_field(r.get("report"))]
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"{cache}: no volumes with a report in split {split!r}")
    sections = _ctrate_sections(ctrate_root, sorted({r["split"] for r in rows})) if ctrate_root else {}
    items = []
    for r in rows:
        findings, impression = r.get("findings"), r.get("impression")
        if findings is None and impression is None:
            findings, impression = sections.get(r["id"], (r["report"], ""))
        findings, impression = clean_field(findings), clean_field(impression)
        items.append(ReportItem(r["id"], findings, impression, report_text(findings, impression),
                                volume_path(cache, r)))
    if not any(i.impression for i in items):
        log.warning("%s: no separate Impression sections (pass the CT-RATE root); reports are learnt as Findings",
                    cache)
    return items


def load_cached_volume(path: Path) -> torch.Tensor:
    """A cached volume as model input.

    Shape:
        -> (1, 1, D, H, W) float32 in [0, 1]
    """
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the cached volume: {err}") from err
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a (D, H, W) array, got shape {arr.shape}")
    return torch.from_numpy(PreprocessSpec.decode(arr).copy())[None, None]


@torch.no_grad()
def extract_features(feature_fn: Callable[[torch.Tensor], torch.Tensor], volumes: Sequence[Callable[[], torch.Tensor]],
                     grid: tuple[int, int, int], batch_size: int = 4, device: str = "cpu") -> torch.Tensor:
    """Encoder feature maps of many volumes, pooled to a fixed grid (the decoder's input).

    Args:
        feature_fn: e.g. ``DualEncoder.volume_feature_map`` (the encoder in eval mode).
        volumes: loaders, each returning one (1, 1, D, H, W) volume.
        grid: (d, h, w) of the pooled map.

    Returns:
        (N, C, *grid) float32 on the CPU.
    """
    out = []
    for start in progress(range(0, len(volumes), batch_size), desc="features", unit="batch"):
        batch = torch.cat([load() for load in volumes[start:start + batch_size]]).to(device)
        out.append(pool_feature_map(feature_fn(batch).float(), grid).cpu())
    return torch.cat(out)


def most_common_report(items: Sequence[ReportItem], label_set: str = "ct") -> ReportItem:
    """The trivial baseline's report: the most common report of the training set, by findings.

    The labeler's most common label vector among the training reports is taken (ties: fewer
    positive labels, i.e. the normal direction), then the most frequent report text with that vector
    (ties: first in id order). Grouping by findings first keeps a scan whose several reconstructions
    share one report from counting as "common".
    """
    if not items:
        raise ValueError("most_common_report: no reports")
    vectors = [tuple(v) for v in label_matrix([i.report for i in items], label_set).tolist()]
    counts = Counter(vectors)
    common = min(counts, key=lambda v: (-counts[v], sum(v), v))
    group = sorted((i for i, v in zip(items, vectors) if v == common), key=lambda i: i.id)
    texts = Counter(i.report for i in group)
    best = max(texts.values())
    return next(i for i in group if texts[i.report] == best)
