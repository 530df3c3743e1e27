"""The planned generator on the tiny synthetic world: its findings come from the image.

The "encoder" is fixed and untrained (the volume's intensity bands averaged on a coarse grid), so what the
probes find is in the voxels; the checks: clinical F1 above the always-normal template and above the same
generator fed other volumes' plans (shuffled), no report that states a finding and its negation, and sides
that follow the plan (the oracle's sides match the ground truth; mirrored sides do not).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctxray.data.text import report_text
from ctxray.generate.checks import contradictions, grouped_clinical_efficacy, laterality_agreement
from ctxray.generate.plan import Plan, plans_from_reports, shuffled_plans
from ctxray.generate.tune import _labels as tune_labels


class IntensityBands(nn.Module):
    """A fixed feature map: the share of voxels above each of 9 levels, on a 4x6x6 grid (no weights)."""

    levels = torch.linspace(0.1, 0.9, 9)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, 1, D, H, W) -> (B, 9, 4, 6, 6)"""
        return F.adaptive_avg_pool3d((x > self.levels.view(1, -1, 1, 1, 1)).float(), (4, 6, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).flatten(1)


@pytest.fixture(scope="module")
def fitted(tiny_world, tmp_path_factory):
    from ctxray.data.cache import build_cache
    from ctxray.data.ingest import discover
    from ctxray.data.spec import get_preset
    from ctxray.generate.data import load_cached_volume, most_common_report, read_items
    from ctxray.generate.planned import PlannedConfig, VolumeView, encode_volumes, fit_planned
    from ctxray.generate.run_planned import patient_of

    cache = tmp_path_factory.mktemp("planned_world") / "cache"
    found = discover(tiny_world / "ct-rate")
    build_cache(found.items, cache, get_preset("small"), workers=1, prior_errors=found.errors)
    train, valid = read_items(cache, "train"), read_items(cache, "valid")
    view = VolumeView(IntensityBands(), nn.Identity())

    def loaders(items):
        return [lambda p=i.path: load_cached_volume(p) for i in items]

    feats, flipped = encode_volumes(view, loaders(train)), encode_volumes(view, loaders(train), flip=True)
    base = most_common_report(train)
    gen = fit_planned(feats, flipped, [i.findings for i in train], [i.impression for i in train],
                      (base.findings, base.impression), PlannedConfig(folds=3, wording="frequent"),
                      groups=[patient_of(i.id) for i in train])
    records = [json.loads(line) for line in (tiny_world / "ct-rate" / "ground_truth.jsonl").read_text().splitlines()]
    by_id = {r["VolumeName"].removesuffix(".nii.gz"): r for r in records}
    return gen, encode_volumes(view, loaders(valid)), valid, base.report, [by_id[i.id] for i in valid]


def _texts(gen, plans) -> list[str]:
    return [report_text(f, i) for f, i in gen.write(plans)]


def _mirrored(plans: list[Plan]) -> list[Plan]:
    swap = {"left": "right", "right": "left"}
    return [Plan(p.labels, {k: swap.get(v, v) for k, v in p.sides.items()}) for p in plans]


@pytest.mark.slow
def test_planned_reports_beat_the_template_and_the_shuffled_plans(fitted) -> None:
    gen, feats, valid, template, _ = fitted
    refs = [i.report for i in valid]
    plans = gen.plan(feats)
    planned = grouped_clinical_efficacy(_texts(gen, plans), refs)["macro_f1"]
    normal = grouped_clinical_efficacy([template] * len(refs), refs)["macro_f1"]
    shuffled = [grouped_clinical_efficacy(_texts(gen, shuffled_plans(plans, s)), refs)["macro_f1"] for s in range(3)]
    assert normal == 0.0
    assert planned > max(shuffled) + 0.02, (planned, shuffled)  # measured 0.244 vs 0.17-0.20


def test_no_report_states_a_finding_and_its_negation(fitted) -> None:
    gen, feats, valid, _, _ = fitted
    plans = gen.plan(feats)
    oracle = plans_from_reports([i.report for i in valid])
    for plan_set in (plans, oracle, shuffled_plans(plans, 0), _mirrored(oracle)):
        texts = _texts(gen, plan_set)
        assert [t for t in texts if contradictions(t)] == []
        assert all(t.strip() for t in texts)


def test_sides_follow_the_plan(fitted) -> None:
    gen, feats, valid, _, truths = fitted
    oracle = plans_from_reports([i.report for i in valid])
    exact = laterality_agreement(_texts(gen, oracle), truths)
    # the reference's sides, written back, match the world: 0.99 on the tiny world (1 of 100 sided findings
    # differs), 0.989 on the demo world (README); a mirrored plan falls below 0.5
    assert exact["n"] >= 30 and exact["exact"] >= 0.97
    assert laterality_agreement(_texts(gen, _mirrored(oracle)), truths)["exact"] < 0.5
    # The sides the generator plans from these fixed intensity-band features are at chance on the tiny world: exact
    # 0.471 against 0.460 for their mirror at fb55bcd, 0.500 against 0.512 after the renderer change of 073f817
    # (the descending aorta beside the spine, fibrotic bands); a check that they beat their mirror passed by one
    # finding in 87 and was dropped. The side probe itself is tested where a side signal exists
    # (tests/generate/test_gen_planned_units.py); the demo world's figure is in the README.
    assert laterality_agreement(_texts(gen, gen.plan(feats)), truths)["n"] >= 10


def test_calibrated_on_new_volumes_the_gate_plans_that_share_of_them_normal(fitted) -> None:
    from dataclasses import replace

    from ctxray.generate.run_planned import calibration_set, patient_of
    from ctxray.generate.tune import calibrate, calibration_reports

    gen, feats, valid, template, _ = fitted
    cal = calibration_set(valid, feats)
    assert cal.groups == [patient_of(i.id) for i in valid] and cal.reports == [i.report for i in valid]
    calibrated = calibrate(replace(gen), cal, 1.0, 0.5)
    gated = calibrated.p_normal(feats) >= calibrated.gate_threshold
    assert abs(gated.mean() - 0.5) <= 1.0 / len(valid) + 1e-9
    plans = calibrated.plan(feats)
    assert all(not plans[i].labels for i in range(len(plans)) if gated[i])
    texts = _texts(calibrated, plans)
    assert all(texts[i] == template for i in range(len(texts)) if gated[i])  # the template, word for word
    assert gen.cfg.operating_point_on == "train" and calibrated.cfg.operating_point_on == "calibration"  # a copy
    refs = [i.report for i in valid]
    nested = calibration_reports(gen, cal, 1.0, 0.5, tune_labels(refs, gen.names))
    assert len(nested) == len(valid) and not [t for t in nested if contradictions(t)]
    # measured 0.225 (planned on the whole split: 0.244, shuffled plans 0.17-0.20, the template 0)
    assert grouped_clinical_efficacy(nested, refs)["macro_f1"] > 0.15


@pytest.mark.slow
def test_swap_side_features_fit_and_write_reports(tiny_world, tmp_path) -> None:
    """side_features='swap' end to end on the tiny world: the view adds the half-swapped volumes' features, the
    side probe reads per-label score drops (N, L, 2), reports carry no contradiction; without the swapped features
    the generator refuses, naming them."""
    import numpy as np

    from ctxray.data.cache import build_cache
    from ctxray.data.ingest import discover
    from ctxray.data.spec import get_preset
    from ctxray.generate.data import load_cached_volume, most_common_report, read_items
    from ctxray.generate.planned import PlannedConfig, VolumeView, encode_volumes, fit_planned

    cache = tmp_path / "cache"
    found = discover(tiny_world / "ct-rate")
    build_cache(found.items, cache, get_preset("small"), workers=1, prior_errors=found.errors)
    train, valid = read_items(cache, "train"), read_items(cache, "valid")
    view = VolumeView(IntensityBands(), nn.Identity(), swap=True)

    def loaders(items):
        return [lambda p=i.path: load_cached_volume(p) for i in items]

    feats = encode_volumes(view, loaders(train))
    flipped = encode_volumes(view, loaders(train), flip=True)
    assert "swap_low.embedding" in feats and "swap_low.embedding" not in flipped
    assert not np.allclose(feats["swap_low.embedding"], feats["embedding"])
    base = most_common_report(train)
    gen = fit_planned(feats, flipped, [i.findings for i in train], [i.impression for i in train],
                      (base.findings, base.impression),
                      PlannedConfig(folds=3, wording="frequent", side_features="swap"))
    vfeats = encode_volumes(view, loaders(valid))
    x = gen.side_inputs(vfeats)
    assert x.shape == (len(valid), len(gen.names), 2) and np.isfinite(x).all()
    plans = gen.plan(vfeats)
    texts = _texts(gen, plans)
    assert len(texts) == len(valid) and not [t for t in texts if contradictions(t)]
    assert any(side in ("left", "right", "bilateral") for p in plans for side in p.sides.values())
    with pytest.raises(ValueError, match="swap_low.embedding"):
        gen.side_inputs({k: v for k, v in vfeats.items() if not k.startswith("swap_")})
