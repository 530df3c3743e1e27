"""Choosing the planned generator's operating point: the selection rule and the fast labelling it reads."""

from __future__ import annotations

import json
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


def test_with_a_calibration_set_the_choice_is_scored_on_it(monkeypatch):
    """Calibration volumes, not training folds, are written and scored, against their own references."""
    cal = tune.Calibration({"embedding": np.zeros((2, 3))}, ["Small left pleural effusion.", "Heart size normal."],
                           ["Effusion.", "No effusion."])
    seen: dict = {"refs": []}
    monkeypatch.setattr(tune, "fit_planned", lambda *a, **k: SimpleNamespace(names=["x"]))
    monkeypatch.setattr(tune, "training_reports", lambda *a, **k: pytest.fail("training folds were used"))

    def cal_reports(gen, calibration, beta, share, y):
        assert calibration is cal and y == cal.reports  # (labels stubbed: the texts themselves)
        return [f"{share}|{beta}"] * 2

    monkeypatch.setattr(tune, "calibration_reports", cal_reports)
    monkeypatch.setattr(tune, "_labels", lambda texts, names: list(texts))

    def nlg(texts, refs, use_java=False):
        seen["refs"].append(list(refs))
        if texts[0] == TEMPLATE:
            return {"BLEU-4": 0.2, "ROUGE-L": 0.4, "CIDEr": 0.5}
        share = float(texts[0].split("|")[0])
        return {"BLEU-4": 0.2 * (1.2 if share == 0.6 else 0.8), "ROUGE-L": 0.4, "CIDEr": 0.5}

    monkeypatch.setattr(tune, "nlg_metrics", nlg)
    monkeypatch.setattr(tune, "label_scores", lambda y, pred, names: [SimpleNamespace(f1=0.3), None])
    cfg, rows = tune.choose_operating_point({}, {}, ["Heart size normal."], ["No effusion."],
                                            ("Heart size normal.", "No effusion."), PlannedConfig(), ["p1"],
                                            betas=(0.75,), shares=(0.45, 0.6), calibration=cal)
    assert (cfg.normal_share, cfg.beta, cfg.operating_point_on) == (0.6, 0.75, "calibration")
    assert all(refs == cal.reports for refs in seen["refs"])  # template and settings scored on calibration
    assert {r["on"] for r in rows} == {"calibration"} and {r["volumes"] for r in rows} == {2}


def test_calibrate_takes_thresholds_and_the_gate_from_the_calibration_volumes():
    names = label_names("ct")
    j = names.index("Pleural effusion")
    reports = ["Small left pleural effusion."] * 30 + ["Heart size normal. No pleural effusion."] * 71
    p_normal = np.linspace(0.0, 1.0, 101)
    scores = np.full((101, len(names)), 0.1)
    scores[:, j] = np.r_[np.linspace(0.6, 0.9, 30), np.linspace(0.0, 0.7, 71)]  # effusions from 0.6; 14 others too
    gen = SimpleNamespace(names=names, scores=lambda feats: scores, p_normal=lambda feats: p_normal, gate=object(),
                          thresholds=np.zeros(len(names)), gate_threshold=0.99, cfg=PlannedConfig(normal_share=0.1))
    cal = tune.Calibration({"embedding": np.zeros((101, 2))}, reports, [""] * 101)
    tune.calibrate(gen, cal, 1.0, 0.3)
    assert 0.6 - 1e-9 <= gen.thresholds[j] <= 0.7 + 1e-9  # F1-optimal cut on the calibration volumes
    assert np.mean(p_normal >= gen.gate_threshold) == pytest.approx(0.3, abs=0.011)
    assert (gen.cfg.beta, gen.cfg.normal_share, gen.cfg.operating_point_on) == (1.0, 0.3, "calibration")
    tune.calibrate(gen, cal, 1.0, 0.0)
    assert gen.gate_threshold == float("inf")  # share 0: the gate is off


def test_calibration_set_needs_one_report_per_volume():
    with pytest.raises(ValueError, match="3 volumes, 2 findings"):
        tune.Calibration({"embedding": np.zeros((3, 2))}, ["a", "b"], ["", "", ""])


def _cache(root, rows):
    root.mkdir(parents=True)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_a_calibration_volume_the_model_trained_on_is_refused(tmp_path):
    from ctxray.generate.run_planned import calibration_items

    report = "Heart size normal. Impression: no acute finding."
    train = _cache(tmp_path / "train", [{"id": f"t{i}", "split": "train", "report": report, "sha256": f"h{i}"}
                                        for i in range(3)])
    fresh = _cache(tmp_path / "fresh", [{"id": "t0", "split": "train", "report": report, "sha256": "new0"},
                                        {"id": "t1", "split": "valid", "report": report, "sha256": "new1"}])
    items = calibration_items(fresh, None, train, "train")  # the same ids, other bytes: another world
    assert [i.id for i in items] == ["t0", "t1"]
    assert [i.id for i in calibration_items(fresh, ["valid"], train, "train")] == ["t1"]
    seen = _cache(tmp_path / "seen", [{"id": "c0", "split": "valid", "report": report, "sha256": "h2"}])
    with pytest.raises(ValueError, match=r"seen: 1 calibration volume\(s\) are training volumes .* c0"):
        calibration_items(seen, None, train, "train")
