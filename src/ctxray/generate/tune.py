"""Choosing the planned generator's operating point on the training split only.

A plan with many findings has high clinical recall but its wrong sentences cost n-gram overlap; a plan
with few is the normal template. :func:`training_reports` writes out-of-fold reports for the *training*
volumes (each volume's scores from a probe fitted without its fold, its thresholds and normal gate chosen
on the other folds, its neighbours from other patients),
and :func:`choose_operating_point` picks the F-beta of the thresholds and the wording on them: the highest
training clinical-efficacy macro F1 among the settings whose training BLEU-4, ROUGE-L and CIDEr reach the
normal template's on the same training reports (else the setting closest to them). Validation data is
never read.

Training folds are optimistic about the encoder: out-of-fold probes remove the probe's own fit, not the CT
encoder's, which was trained on those very volumes (demo world: the gate's AUROC 0.92 out-of-fold on
training, 0.82 on validation), so thresholds chosen there plan too many findings on new volumes. Given a
:class:`Calibration` set (volumes with reports the encoder never saw, e.g. a held-out part of the data or,
on the synthetic world, a world of another seed), everything is taken on it instead
(``PlannedConfig.operating_point_on="calibration"``): the label thresholds (F-beta on the probe's scores of
the calibration volumes; the probe itself stays fitted on training), the gate's quantile, and the choice of
``beta`` and ``normal_share``, scored with nested calibration folds (each fold's thresholds and gate from
the other folds) so the figures of a setting are not those of thresholds fitted on the same volumes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ctxray.data.text import report_text
from ctxray.generate.metrics import label_scores, nlg_metrics
from ctxray.generate.plan import f1_thresholds, fold_ids, plan_matrix, plans_from_reports, plans_from_scores
from ctxray.generate.planned import Features, PlannedConfig, PlannedGenerator, fit_planned, gate_threshold
from ctxray.labeler import find_mentions, split_sentences

log = logging.getLogger(__name__)


@dataclass
class Calibration:
    """Volumes with their reports that the CT encoder was never trained on (see the module docstring).

    Shape:
        feats: :func:`ctxray.generate.planned.encode_volumes` of the N volumes; findings, impressions: N each.
    """

    feats: Features
    findings: Sequence[str]
    impressions: Sequence[str]
    groups: Sequence[str] | None = None  # patient ids: a patient's volumes stay in one fold

    def __post_init__(self) -> None:
        n = len(self.feats["embedding"])
        if not (n == len(self.findings) == len(self.impressions)) or n == 0:
            raise ValueError(f"calibration set: {n} volumes, {len(self.findings)} findings and "
                             f"{len(self.impressions)} impressions (need the same number, at least 1)")

    @property
    def reports(self) -> list[str]:
        return [report_text(f, i) for f, i in zip(self.findings, self.impressions)]


def calibrate(gen: PlannedGenerator, calibration: Calibration, beta: float, share: float) -> PlannedGenerator:
    """Thresholds maximising F-beta on the calibration volumes and a gate passing ``share`` of them as normal
    (in place; the probes stay as fitted on training)."""
    y = _labels(calibration.reports, gen.names)
    gen.thresholds = f1_thresholds(y, gen.scores(calibration.feats), beta)
    if gen.gate is not None:
        gen.gate_threshold = gate_threshold(gen.p_normal(calibration.feats), share)
    gen.cfg = replace(gen.cfg, beta=beta, normal_share=share, operating_point_on="calibration")
    return gen


def calibration_reports(gen: PlannedGenerator, calibration: Calibration, beta: float, share: float,
                        y: np.ndarray) -> list[str]:
    """Reports for the calibration volumes (``y``: their reports' labels), nested like
    :func:`training_reports`: each fold's thresholds and gate are chosen on the other calibration folds."""
    scores = gen.scores(calibration.feats)
    p_normal = gen.p_normal(calibration.feats) if gen.gate is not None else None
    fold = fold_ids(len(scores), gen.cfg.folds, gen.cfg.seed, calibration.groups)
    decided = np.empty_like(scores, dtype=np.float64)
    for f in np.unique(fold):
        rows, rest = fold == f, fold != f
        decided[rows] = np.where(scores[rows] >= f1_thresholds(y[rest], scores[rest], beta)[None], 1.0, -1.0)
        if share > 0 and p_normal is not None:
            decided[rows & (p_normal >= gate_threshold(p_normal[rest], share))] = -1.0
    plans = plans_from_scores(decided, np.zeros(len(gen.names)), gen.names, gen.side_inputs(calibration.feats),
                              gen.sides, gen.sided)
    return [report_text(f, i) for f, i in gen.write(plans, gen.neighbours(calibration.feats))]


def training_reports(gen: PlannedGenerator, feats: Features, groups: Sequence[str], beta: float,
                     normal_share: float = 0.0, y: np.ndarray | None = None) -> list[str]:
    """Out-of-fold reports for the training volumes at thresholds maximising F-beta on the same OOF scores,
    with the normal gate passing ``normal_share`` of them as normal."""
    if y is None:
        y = plan_matrix(plans_from_reports([report_text(*_sections(gen, i)) for i in range(len(groups))]), gen.names)
    # nested: each fold's thresholds and gate come from the other folds' out-of-fold scores, so the
    # figures are not optimistic about thresholds chosen on the very rows they are scored on
    fold = fold_ids(len(groups), gen.cfg.folds, gen.cfg.seed, groups)
    scores = np.array(gen.train_oof, dtype=np.float64)
    for f in np.unique(fold):
        rows, rest = fold == f, fold != f
        thr = f1_thresholds(y[rest], gen.train_oof[rest], beta)
        block = np.where(gen.train_oof[rows] >= thr[None], 1.0, -1.0)
        if normal_share > 0 and gen.train_gate_oof is not None:
            normal = gen.train_gate_oof[rows] >= gate_threshold(gen.train_gate_oof[rest], normal_share)
            block[normal] = -1.0
        scores[rows] = block
    plans = plans_from_scores(scores, np.zeros(len(gen.names)), gen.names, gen.side_inputs(feats), gen.sides, gen.sided)
    if gen.cfg.wording == "frequent":
        nb = np.zeros((len(plans), 0), dtype=np.int64)
    else:
        sim = feats["embedding"] @ gen.train_embedding.T
        g = np.asarray(groups)
        sim[g[:, None] == g[None, :]] = -np.inf  # never a report of the same patient
        nb = np.argsort(-sim, axis=1, kind="stable")[:, : gen.cfg.neighbours]
    return [report_text(f, i) for f, i in gen.write(plans, nb)]


def _sections(gen: PlannedGenerator, i: int) -> tuple[str, str]:
    rep = gen.bank.reports[i]
    return (" ".join(s.text for s in rep if s.section == "findings"),
            " ".join(s.text for s in rep if s.section == "impression"))


def choose_operating_point(feats: Features, flipped: Features, findings: Sequence[str], impressions: Sequence[str],
                           skeleton: tuple[str, str], cfg: PlannedConfig, groups: Sequence[str],
                           prompts=None, betas: Sequence[float] = (0.75, 0.5, 0.35),
                           shares: Sequence[float] = (0.45, 0.6, 0.75),
                           use_java: bool | None = False,
                           calibration: Calibration | None = None) -> tuple[PlannedConfig, list[dict]]:
    """The setting chosen on training data (or on ``calibration``), and the table of every setting tried.

    The wording stays ``cfg.wording``; ``beta`` and ``normal_share`` are chosen from the grids. The rows
    hold the figures of the set the choice was made on (``"on"``: ``training folds`` or ``calibration``).
    """
    train_refs = [report_text(f, i) for f, i in zip(findings, impressions)]
    refs = train_refs if calibration is None else calibration.reports
    template = nlg_metrics([report_text(*skeleton)] * len(refs), refs, use_java=use_java)
    gen = fit_planned(feats, flipped, findings, impressions, skeleton, cfg, prompts, groups)
    y = _labels(refs, gen.names)
    rows = []
    for share in shares:
        for beta in betas:
            if calibration is None:
                texts = training_reports(gen, feats, groups, beta, share, y)
            else:
                texts = calibration_reports(gen, calibration, beta, share, y)
            nlg = nlg_metrics(texts, refs, use_java=use_java)
            ce = label_scores(y, _labels(texts, gen.names), gen.names)[-2].f1
            worst = min(nlg[k] / template[k] for k in ("BLEU-4", "ROUGE-L", "CIDEr"))
            rows.append({"on": "training folds" if calibration is None else "calibration", "volumes": len(refs),
                         "beta": beta, "normal_share": share, "ce_macro_f1": ce, "worst_ratio_to_template": worst,
                         **{k: nlg[k] for k in ("BLEU-4", "ROUGE-L", "CIDEr")}})
            log.info("%s: share %.2f beta %.2f CE %.3f BLEU-4 %.3f ROUGE-L %.3f CIDEr %.3f", rows[-1]["on"], share,
                     beta, ce, nlg["BLEU-4"], nlg["ROUGE-L"], nlg["CIDEr"])
    ok = [r for r in rows if r["worst_ratio_to_template"] >= 1.0]
    best = max(ok, key=lambda r: r["ce_macro_f1"]) if ok else max(rows, key=lambda r: r["worst_ratio_to_template"])
    for r in rows:
        r["template"] = {k: template[k] for k in ("BLEU-4", "ROUGE-L", "CIDEr")}
        r["chosen"] = r is best
    on = "train" if calibration is None else "calibration"
    return replace(cfg, beta=best["beta"], normal_share=best["normal_share"], operating_point_on=on), rows


def _labels(texts: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """The labeler's (N, L) matrix (hedged = positive), reading each distinct sentence once.

    The labeler reads sentence by sentence, so labelling the distinct sentences and combining per report
    gives exactly ``label_matrix``; generated reports share most sentences, which makes this fast.
    """

    index = {n: j for j, n in enumerate(names)}

    @functools.cache
    def read(sentence: str) -> tuple[tuple[str, str], ...]:
        return tuple((m.label, m.status) for m in find_mentions(sentence))

    out = np.zeros((len(texts), len(names)), dtype=np.float32)
    for i, text in enumerate(texts):
        for sentence in split_sentences(text):
            for label, status in read(sentence):
                if status != "negative":
                    out[i, index[label]] = 1.0
    return out
