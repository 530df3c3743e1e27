"""Report generation metrics: n-gram metrics (pycocoevalcap) and clinical efficacy (labeler).

- :func:`nlg_metrics`: BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) with the pycocoevalcap code that
  captioning and report-generation papers use, after its PTB tokenizer. METEOR and the PTB tokenizer
  run Java; if ``java`` is missing METEOR is reported as ``None`` (unavailable) and a simple
  lower-case/punctuation split replaces the PTB tokenizer (``tokenizer`` says which ran).
- :func:`clinical_efficacy`: the labeler reads generated and reference reports; per-label and
  macro/micro precision, recall and F1 of the generated labels against the reference labels.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ctxray.labeler import label_matrix, label_names
from ctxray.utils.io import json_safe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelScores:
    """Precision/recall/F1 of one label (or the "macro"/"micro" summary row).

    ``precision`` is NaN when nothing was predicted positive, ``recall`` when nothing is positive
    in the reference; ``f1`` is NaN when both are NaN, else 0 when either is 0 or NaN.
    """

    label: str
    precision: float
    recall: float
    f1: float
    support: int  # reference positives
    predicted: int  # predicted positives

    def as_dict(self) -> dict:
        return asdict(self)


def _prf(tp: float, n_pred: float, n_true: float) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else float("nan")
    r = tp / n_true if n_true else float("nan")
    if np.isnan(p) and np.isnan(r):
        return p, r, float("nan")
    if not (p > 0 and r > 0):  # 0 or NaN on one side
        return p, r, 0.0
    return p, r, 2 * p * r / (p + r)


def label_scores(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str]) -> list[LabelScores]:
    """Per-label P/R/F1 plus macro (mean over labels with reference positives) and micro rows.

    Args:
        y_true: reference labels; values >= 0.5 count as positive.
        y_pred: predicted labels, same convention.
        names: label names.

    Shape:
        y_true, y_pred: (N, L).

    Returns:
        L rows in ``names`` order, then "macro" and "micro".
    """
    t = np.asarray(y_true) >= 0.5
    p = np.asarray(y_pred) >= 0.5
    if t.shape != p.shape or t.ndim != 2 or t.shape[1] != len(names):
        raise ValueError(f"label_scores: shapes {t.shape} and {p.shape} do not match {len(names)} names")
    rows = []
    for j, name in enumerate(names):
        tp, n_pred, n_true = float((t[:, j] & p[:, j]).sum()), float(p[:, j].sum()), float(t[:, j].sum())
        rows.append(LabelScores(name, *_prf(tp, n_pred, n_true), int(n_true), int(n_pred)))
    present = [r for r in rows if r.support > 0]
    if present:
        mp = float(np.nanmean([r.precision if not np.isnan(r.precision) else 0.0 for r in present]))
        mr = float(np.mean([r.recall for r in present]))
        mf = float(np.mean([r.f1 for r in present]))
    else:
        mp = mr = mf = float("nan")
    rows.append(LabelScores("macro", mp, mr, mf, int(t.sum()), int(p.sum())))
    rows.append(LabelScores("micro", *_prf(float((t & p).sum()), float(p.sum()), float(t.sum())),
                            int(t.sum()), int(p.sum())))
    return rows


def clinical_efficacy(generated: Sequence[str], references: Sequence[str], label_set: str = "ct",
                      uncertain_as: float = 1.0) -> list[LabelScores]:
    """Clinical efficacy: the labeler's labels of generated reports scored against the references'.

    Returns:
        per-label rows, then "macro" (over labels present in the references) and "micro".
    """
    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports but {len(references)} references")
    y_pred = label_matrix(list(generated), label_set, uncertain_as=uncertain_as)
    y_true = label_matrix(list(references), label_set, uncertain_as=uncertain_as)
    return label_scores(y_true, y_pred, label_names(label_set))


def java_available() -> bool:
    """Whether a ``java`` executable is on PATH (METEOR and the PTB tokenizer need it)."""
    return shutil.which("java") is not None


def _simple_tokenize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def nlg_metrics(generated: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                use_java: bool | None = None) -> dict[str, float | str | None]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr of generated reports against references.

    Args:
        generated: one report per sample.
        references: one reference (or a list of references) per sample.
        use_java: force the Java parts on/off; None uses them when ``java`` is on PATH.

    Returns:
        ``{"BLEU-1".. "BLEU-4", "METEOR" (None if Java is unavailable), "ROUGE-L", "CIDEr",
        "tokenizer": "ptb"|"simple", "n": N}``; corpus-level scores as pycocoevalcap computes them.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(generated) != len(references):
        raise ValueError(f"{len(generated)} generated reports but {len(references)} references")
    if not generated:
        raise ValueError("nlg_metrics: no reports")
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    java = java_available() if use_java is None else use_java
    gts = {i: [{"caption": c} for c in rs] for i, rs in enumerate(refs)}
    res = {i: [{"caption": g}] for i, g in enumerate(generated)}
    if java:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        both = PTBTokenizer().tokenize({**{f"g{k}": v for k, v in gts.items()},  # one Java start, not two
                                         **{f"r{k}": v for k, v in res.items()}})
        gts_t = {k: both[f"g{k}"] for k in gts}
        res_t = {k: both[f"r{k}"] for k in res}
    else:
        gts_t = {k: [_simple_tokenize(c["caption"]) for c in v] for k, v in gts.items()}
        res_t = {k: [_simple_tokenize(c["caption"]) for c in v] for k, v in res.items()}
    # empty hypotheses break BLEU's length ratio and METEOR's protocol: use a placeholder token
    res_t = {k: [v[0] if v[0].strip() else "<empty>"] for k, v in res_t.items()}
    out: dict[str, float | str | None] = {}
    bleu, _ = Bleu(4).compute_score(gts_t, res_t, verbose=0)
    out.update({f"BLEU-{n + 1}": float(b) for n, b in enumerate(bleu)})
    out["METEOR"] = _meteor(gts_t, res_t) if java else None
    out["ROUGE-L"] = float(Rouge().compute_score(gts_t, res_t)[0])
    out["CIDEr"] = float(Cider().compute_score(gts_t, res_t)[0])
    out["tokenizer"] = "ptb" if java else "simple"
    out["n"] = len(generated)
    return out


def _meteor(gts: dict, res: dict) -> float | None:
    """pycocoevalcap METEOR 1.5; None (unavailable) if the Java subprocess fails."""
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        scorer = Meteor()
    except OSError as err:
        log.warning("METEOR unavailable: %s", err)
        return None
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:
        close = getattr(scorer, "close", None)
        if close is not None:
            close()


def score_reports(generated: Sequence[str], references: Sequence[str], label_set: str = "ct") -> dict:
    """NLG metrics and clinical efficacy of generated reports.

    Returns:
        ``{"nlg": {...}, "clinical": {"per_label": [{label, precision, recall, f1, support, predicted}]
        (label-set order), "macro": {...}, "micro": {...}}}``; NaN (undefined) becomes null.
    """
    rows = clinical_efficacy(generated, references, label_set)
    clean = [json_safe(r.as_dict()) for r in rows]
    return {"nlg": nlg_metrics(generated, references),
            "clinical": {"per_label": clean[:-2], "macro": clean[-2], "micro": clean[-1]}}
