"""Checks of generated reports beyond n-grams: self-contradiction, laterality, clinical efficacy by label group.

- :func:`contradictions`: labels a report states (positive or hedged) *and* negates, read by the labeler.
- :func:`laterality_agreement`: for each finding a report states with a side, whether that side matches
  the synthetic world's ground truth (``ground_truth.jsonl`` lesions: left / right / both).
- :func:`grouped_clinical_efficacy`: clinical-efficacy macro F1 over all labels, the X-ray-visible labels
  and the CT-only labels (``labels.json``'s ``xray_visible``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ctxray.generate.metrics import clinical_efficacy, nlg_metrics
from ctxray.labeler import find_mentions
from ctxray.labels import load_labels


def contradictions(text: str, label_set: str = "ct") -> list[str]:
    """Labels that ``text`` both states (positive or hedged) and negates."""
    stated, negated = set(), set()
    for m in find_mentions(text, label_set):
        (negated if m.status == "negative" else stated).add(m.label)
    return sorted(stated & negated)


def truth_sides(record: Mapping) -> dict[str, frozenset[str]]:
    """Label -> the sides ({left}, {right} or both) of its lesions in one ``ground_truth.jsonl`` record."""
    out: dict[str, set[str]] = {}
    for lesion in record.get("lesions", []):
        side = lesion.get("laterality")
        if side in ("left", "right"):
            out.setdefault(lesion["label"], set()).add(side)
        elif side == "bilateral":
            out.setdefault(lesion["label"], set()).update(("left", "right"))
    return {k: frozenset(v) for k, v in out.items()}


def side_hits_summary(per: Mapping[str, Sequence[tuple[bool, bool]]]) -> dict:
    """Per label, (side set right, the training side rates' set right) pairs -> the side scores of a readout:
    ``{"n", "exact", "prior_exact", "per_label": {label: {"n", "hits", "prior_hits"}}}`` (shares NaN when n is 0)."""
    flat = [h for v in per.values() for h in v]
    return {"n": len(flat), "exact": float(np.mean([a for a, _ in flat])) if flat else float("nan"),
            "prior_exact": float(np.mean([b for _, b in flat])) if flat else float("nan"),
            "per_label": {k: {"n": len(v), "hits": sum(a for a, _ in v), "prior_hits": sum(b for _, b in v)}
                          for k, v in sorted(per.items())}}


def stated_sides(text: str, label_set: str = "ct") -> dict[str, frozenset[str]]:
    """Label -> the sides a report names for it (positive or hedged mentions that name a side)."""
    out: dict[str, set[str]] = {}
    for m in find_mentions(text, label_set):
        if m.status == "negative" or m.laterality not in ("left", "right", "bilateral"):
            continue
        out.setdefault(m.label, set()).update(("left", "right") if m.laterality == "bilateral" else (m.laterality,))
    return {k: frozenset(v) for k, v in out.items()}


def laterality_agreement(texts: Sequence[str], truths: Sequence[Mapping], label_set: str = "ct") -> dict:
    """How often the side a report names for a finding matches the ground truth's lesions.

    Counted over (report, label) pairs where the report names a side and the ground truth has lesions of
    that label on a side (a finding stated for a scan without it has no true side and is not counted here;
    clinical efficacy counts it).

    Returns:
        ``{"n": pairs, "exact": share with the same side set, "overlap": share naming at least one true side,
        "per_label": {label: {"n", "exact"}}}``; shares are NaN when ``n`` is 0.
    """
    if len(texts) != len(truths):
        raise ValueError(f"{len(texts)} reports but {len(truths)} ground-truth records")
    per: dict[str, list[tuple[bool, bool]]] = {}
    for text, rec in zip(texts, truths):
        true = truth_sides(rec)
        for label, sides in stated_sides(text, label_set).items():
            if label in true:
                per.setdefault(label, []).append((sides == true[label], bool(sides & true[label])))
    flat = [x for v in per.values() for x in v]
    n = len(flat)
    return {"n": n,
            "exact": float(np.mean([e for e, _ in flat])) if n else float("nan"),
            "overlap": float(np.mean([o for _, o in flat])) if n else float("nan"),
            "per_label": {k: {"n": len(v), "exact": float(np.mean([e for e, _ in v]))} for k, v in sorted(per.items())}}


def grouped_clinical_efficacy(generated: Sequence[str], references: Sequence[str], uncertain_as: float = 1.0) -> dict:
    """Clinical efficacy (CT label set) with macro F1 over all, X-ray-visible and CT-only labels.

    Returns:
        ``{"per_label": [{label, precision, recall, f1, support, predicted, xray_visible}], "macro_f1",
        "xray_visible_f1", "ct_only_f1", "micro_f1"}``; a group's macro is over its labels with reference
        positives.
    """
    visible = set(load_labels().xray_visible_names)
    rows = clinical_efficacy(generated, references, "ct", uncertain_as=uncertain_as)
    per = [dict(r.as_dict(), xray_visible=r.label in visible) for r in rows[:-2]]

    def macro(keep) -> float:
        vals = [r["f1"] for r in per if keep(r) and r["support"] > 0]
        return float(np.mean(vals)) if vals else float("nan")

    return {"per_label": per, "macro_f1": macro(lambda r: True), "xray_visible_f1": macro(lambda r: r["xray_visible"]),
            "ct_only_f1": macro(lambda r: not r["xray_visible"]), "micro_f1": rows[-1].f1}


def score_generated(generated: Sequence[str], references: Sequence[str], truths: Sequence[Mapping] | None = None,
                    use_java: bool | None = None) -> dict:
    """Every figure of the generation table for one set of reports.

    Returns:
        flat ``{"BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "ce_macro_f1", "ce_xray_f1", "ce_ctonly_f1",
        "ce_micro_f1", "ce_per_label", "contradictions" (reports with any), "laterality_acc" (exact side
        matches, NaN without ``truths``), "laterality_n"}``.
    """
    out = dict(nlg_metrics(generated, references, use_java=use_java))
    ce = grouped_clinical_efficacy(generated, references)
    out.update({"ce_macro_f1": ce["macro_f1"], "ce_xray_f1": ce["xray_visible_f1"], "ce_ctonly_f1": ce["ct_only_f1"],
                "ce_micro_f1": ce["micro_f1"], "ce_per_label": ce["per_label"]})
    out["contradictions"] = sum(bool(contradictions(g)) for g in generated)
    lat = laterality_agreement(generated, truths) if truths is not None else {"exact": float("nan"), "n": 0}
    out.update({"laterality_acc": lat["exact"], "laterality_n": lat["n"], "laterality": lat})
    return out
