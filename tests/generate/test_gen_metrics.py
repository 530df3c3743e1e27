"""Metric wrappers against hand-computed values; Java-dependent parts checked or reported unavailable."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctxray.generate.metrics import clinical_efficacy, java_available, label_scores, nlg_metrics

HYP = ["the cat sat on the mat", "a small left pleural effusion", "no acute cardiopulmonary process"]
REF = ["the cat is on the mat", "small left pleural effusion is seen", "no acute cardiopulmonary abnormality"]


def test_label_scores_hand_computed() -> None:
    y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    p = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=np.float32)
    rows = {r.label: r for r in label_scores(y, p, ["a", "b", "c"])}
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert (a.precision, a.recall, a.f1) == (1.0, 0.5, pytest.approx(2 / 3))
    assert (b.precision, b.recall, b.f1) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))
    assert math.isnan(c.recall) and c.precision == 0.0 and c.f1 == 0.0 and c.support == 0
    macro = rows["macro"]  # labels with reference positives only: a, b
    assert macro.precision == pytest.approx((1 + 2 / 3) / 2) and macro.f1 == pytest.approx((2 / 3 + 0.8) / 2)
    micro = rows["micro"]  # tp=3, predicted=5, true=4
    assert (micro.precision, micro.recall) == (pytest.approx(3 / 5), pytest.approx(3 / 4))


def test_label_scores_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes"):
        label_scores(np.zeros((2, 3)), np.zeros((3, 3)), ["a", "b", "c"])


def test_clinical_efficacy_on_reports() -> None:
    refs = ["Small left pleural effusion.", "No pleural effusion.", "Cardiomegaly."]
    gen = ["Pleural effusion.", "Possible pleural effusion.", "Heart size is normal."]
    rows = {r.label: r for r in clinical_efficacy(gen, refs, "xray")}
    eff, cardio = rows["Pleural effusion"], rows["Cardiomegaly"]
    assert (eff.precision, eff.recall, eff.support, eff.predicted) == (0.5, 1.0, 1, 2)
    assert cardio.recall == 0.0 and cardio.f1 == 0.0 and math.isnan(cardio.precision)
    assert rows["macro"].f1 == pytest.approx((2 / 3 + 0.0) / 2)
    strict = {r.label: r for r in clinical_efficacy(gen, refs, "xray", uncertain_as=0.0)}
    assert strict["Pleural effusion"].precision == 1.0


def test_nlg_metrics_known_values_simple_tokenizer() -> None:
    m = nlg_metrics(HYP[:1], REF[:1], use_java=False)
    assert m["METEOR"] is None and m["tokenizer"] == "simple"
    assert m["BLEU-1"] == pytest.approx(5 / 6, abs=1e-6)
    assert m["BLEU-2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5), abs=1e-6)
    assert m["ROUGE-L"] == pytest.approx(5 / 6, abs=1e-6)  # LCS 5 of 6 words both ways


def test_nlg_metrics_identical_reports_score_maximally() -> None:
    m = nlg_metrics(REF, REF, use_java=False)
    for k in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L"):
        assert m[k] == pytest.approx(1.0, abs=1e-6), k
    assert m["CIDEr"] == pytest.approx(10.0, abs=1e-4)  # CIDEr-D: 10 x mean cosine of identical n-grams
    worse = nlg_metrics(HYP, REF, use_java=False)
    assert all(worse[k] < m[k] for k in ("BLEU-4", "ROUGE-L", "CIDEr"))


def test_nlg_metrics_empty_hypothesis_and_length_mismatch() -> None:
    m = nlg_metrics(["", HYP[1]], REF[:2], use_java=False)
    assert 0.0 <= m["BLEU-1"] < 1.0
    with pytest.raises(ValueError, match="references"):
        nlg_metrics(HYP, REF[:2], use_java=False)


@pytest.mark.slow
@pytest.mark.skipif(not java_available(), reason="java not on PATH: METEOR is reported as unavailable")
def test_meteor_and_ptb_tokenizer_with_java() -> None:
    same = nlg_metrics(REF, REF)
    assert same["tokenizer"] == "ptb"
    assert 0.95 < same["METEOR"] <= 1.0  # identical: only METEOR's fragmentation penalty remains
    assert same["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
