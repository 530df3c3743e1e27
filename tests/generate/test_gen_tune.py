"""Choosing the planned generator's operating point: the selection rule and the fast labelling it reads."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ctxray.generate import tune
from ctxray.generate.planned import PlannedConfig
from ctxray.labeler import label_matrix, label_names

TEMPLATE = "Heart size normal. No effusion."


def test_labels_of_distinct_sentences_equal_the_labelers_matrix():
    texts = ["Small left pleural effusion. No pneumothorax.", "Possible consolidation in the right lower lobe.",
             "Heart size normal. Small left pleural effusion.", "", "No lung nodule. Mild emphysema."]
    names = label_names("ct")
    got = tune._labels(texts, names)
    np.testing.assert_array_equal(got, label_matrix(texts, "ct", uncertain_as=1.0))
    assert got.sum() >= 3  # the texts do name findings (hedged ones count)


@pytest.mark.parametrize("reach,expected", [
    # (worst ratio of BLEU-4 / ROUGE-L / CIDEr to the template's, clinical F1) per (normal share, beta)
    ({(0.45, 0.75): (1.1, 0.30), (0.45, 0.5): (0.9, 0.60), (0.6, 0.75): (1.0, 0.40), (0.6, 0.5): (0.8, 0.50)},
     (0.6, 0.75)),  # the best F1 among settings that keep the template's overlap, not the best F1 overall
    ({(0.45, 0.75): (0.7, 0.30), (0.45, 0.5): (0.95, 0.10), (0.6, 0.75): (0.9, 0.40), (0.6, 0.5): (0.8, 0.50)},
     (0.45, 0.5)),  # none keeps it: the closest to the template
])
def test_choice_is_the_best_clinical_f1_that_keeps_the_templates_overlap(monkeypatch, reach, expected):
    monkeypatch.setattr(tune, "fit_planned", lambda *a, **k: SimpleNamespace(names=["x"]))
    monkeypatch.setattr(tune, "training_reports", lambda gen, feats, groups, beta, share, y: [f"{share}|{beta}"])
    monkeypatch.setattr(tune, "_labels", lambda texts, names: list(texts))

    def nlg(texts, refs, use_java=False):
        if texts[0] == TEMPLATE:
            return {"BLEU-4": 0.2, "ROUGE-L": 0.4, "CIDEr": 0.5}
        worst = reach[tuple(float(v) for v in texts[0].split("|"))][0]
        return {"BLEU-4": 0.2 * worst, "ROUGE-L": 0.4 * 3, "CIDEr": 0.5 * 2}

    monkeypatch.setattr(tune, "nlg_metrics", nlg)
    monkeypatch.setattr(tune, "label_scores", lambda y, pred, names: [
        SimpleNamespace(f1=reach[tuple(float(v) for v in pred[0].split("|"))][1] if pred[0] != TEMPLATE else 0.0),
        None])
    cfg, rows = tune.choose_operating_point({}, {}, ["Heart size normal."], ["No effusion."],
                                            ("Heart size normal.", "No effusion."), PlannedConfig(), ["p1"],
                                            betas=(0.75, 0.5), shares=(0.45, 0.6))
    assert (cfg.normal_share, cfg.beta) == expected
    assert [(r["normal_share"], r["beta"]) for r in rows if r["chosen"]] == [expected]
    assert len(rows) == 4 and all(r["template"]["BLEU-4"] == 0.2 for r in rows)
    for r in rows:
        assert r["worst_ratio_to_template"] == pytest.approx(reach[(r["normal_share"], r["beta"])][0])
