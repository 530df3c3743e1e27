"""External check of the report labeler on real text: Indiana University reports vs MeSH.

The IU (NLMCXR) reports carry MeSH *major* terms assigned by human indexers. The rules file's
``iu_mesh_mapping`` (fixed before any comparison, documented there and in the README) maps those
terms to the X-ray labels; a label is positive for a report when any major term maps to it. The
labeler reads the report text (Findings + Impression) with the ``xray`` label set.

The reports are split in two halves by the parity of SHA-256(report id): ``dev`` (for looking at
aggregate figures while writing rules) and ``heldout`` (the half whose figures we report).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ctxray.data.iu import read_iu_reports
from ctxray.generate.metrics import LabelScores, label_scores
from ctxray.labeler import label_matrix, label_names, load_rules

log = logging.getLogger(__name__)

Half = Literal["dev", "heldout", "all"]


def iu_half(report_id: str) -> str:
    """Deterministic half of an IU report: "dev" if SHA-256(id) is even, else "heldout"."""
    return "dev" if int(hashlib.sha256(report_id.encode()).hexdigest(), 16) % 2 == 0 else "heldout"


def _mesh_entry_matches(term: str, entry: str) -> bool:
    parts = [p.strip() for p in term.lower().split("/")]
    want = [p.strip() for p in entry.lower().split("/")]
    return parts[0] == want[0] and all(q in parts[1:] for q in want[1:])


def mesh_label_matrix(mesh_major: Sequence[Sequence[str]], rules: str | None = None) -> np.ndarray:
    """Reference X-ray labels from MeSH major terms.

    Args:
        mesh_major: per report, its MeSH major terms (e.g. ``["Cardiomegaly/mild", "normal"]``).
        rules: labeler rules path; None for the packaged rules.

    Returns:
        (N, L) float32 0/1 in ``label_names("xray")`` order.

    Raises:
        ValueError: the rules' mapping names a label that is not in the X-ray label set.
    """
    r = load_rules(rules)
    names = label_names("xray", rules)
    unknown = sorted(set(r.mesh_mapping) - set(names))
    if unknown:
        raise ValueError(f"{r.source}: iu_mesh_mapping names unknown X-ray labels {unknown}")
    out = np.zeros((len(mesh_major), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        entries = r.mesh_mapping.get(name, ())
        for i, terms in enumerate(mesh_major):
            out[i, j] = float(any(_mesh_entry_matches(t, e) for t in terms for e in entries))
    return out


def validate_on_iu(half: Half = "heldout", uncertain_as: float = 1.0, tgz: str | None = None,
                   rules: str | None = None) -> tuple[list[LabelScores], int]:
    """Per-label precision/recall/F1 of the labeler against MeSH on one half of the IU reports.

    Args:
        half: "heldout" (report this), "dev", or "all".
        uncertain_as: 1.0 counts hedged mentions as positive, 0.0 as negative.
        tgz: the NLMCXR archive; None reads it from the installed ``torchxrayvision`` wheel.

    Returns:
        (scores per label then the "macro" and "micro" rows, number of reports used). Reports
        with empty text or without MeSH major terms are skipped.
    """
    reports = [r for r in read_iu_reports(tgz) if r.report and r.mesh_major]
    if half != "all":
        reports = [r for r in reports if iu_half(r.id) == half]
    if not reports:
        raise ValueError(f"no IU reports in half {half!r}")
    y_true = mesh_label_matrix([r.mesh_major for r in reports], rules)
    y_pred = label_matrix([r.report for r in reports], "xray", uncertain_as=uncertain_as, rules=rules)
    log.info("IU %s half: %d reports", half, len(reports))
    return label_scores(y_true, y_pred, label_names("xray", rules)), len(reports)
