"""The ``independent`` label model (preset ``pointing``, issue 14): no label predicts another, prevalences kept.

Measured on 4,000 draws of each model: the linked model's strongest pair correlation is the control that
the measure sees co-occurrence (about 0.5: consolidation and lung opacity); the independent model's must be
at the level of sampling noise (standard error 1/sqrt(4000) = 0.016 per pair, 153 pairs).
"""

from __future__ import annotations

import numpy as np
import pytest

from ctxray.labels import load_labels
from ctxray.synth.findings import MIN_VISIBLE_NODULE_MM, marginal_prevalence, sample_labels
from ctxray.synth.presets import get_preset
from ctxray.synth.scans import SPLIT_CODE, patient, plan_scans, scan_lesions

N = 4000


def _draw(findings: str, seed: int = 0) -> np.ndarray:
    names = load_labels().names
    rows = [sample_labels(np.random.default_rng([seed, i]), findings)[0] for i in range(N)]
    return np.array([[r[n] for n in names] for r in rows], float)


def _max_abs_phi(y: np.ndarray) -> float:
    c = np.corrcoef(y.T)
    return float(np.max(np.abs(c[~np.eye(len(c), dtype=bool)])))


@pytest.fixture(scope="module")
def draws() -> dict[str, np.ndarray]:
    return {"linked": _draw("linked"), "independent": _draw("independent")}


def test_independent_labels_are_uncorrelated_and_linked_ones_are_not(draws) -> None:
    assert _max_abs_phi(draws["linked"]) > 0.3
    assert _max_abs_phi(draws["independent"]) < 0.07


def test_independent_labels_keep_the_linked_worlds_prevalences(draws) -> None:
    names = load_labels().names
    want = np.array([marginal_prevalence(n) for n in names])
    for y in draws.values():
        se = np.sqrt(want * (1 - want) / N)
        assert np.all(np.abs(y.mean(0) - want) < 4 * se + 0.01), dict(zip(names, y.mean(0).round(3)))


def test_unknown_label_model_is_an_error() -> None:
    with pytest.raises(ValueError, match="independent"):
        sample_labels(np.random.default_rng(0), "correlated")


def test_pointing_preset_scans_use_independent_labels_and_visible_nodules() -> None:
    point, tiny = get_preset("pointing"), get_preset("tiny")
    assert (point.ct_shape, point.ct_spacing) == (tiny.ct_shape, tiny.ct_spacing)
    assert (tiny.findings, tiny.nodules) == ("linked", "ct")  # the default world is unchanged
    sizes: dict[str, list[float]] = {"pointing": [], "tiny": []}
    differ = 0
    for task in plan_scans(point, 0, "train", None)[:40]:
        _, labels, _, lesions = scan_lesions(task)
        assert labels == patient(0, SPLIT_CODE["train"], task.patient, "independent")[1]
        differ += labels != patient(0, SPLIT_CODE["train"], task.patient, "linked")[1]
        sizes["pointing"] += [les.size_mm for les in lesions if les.label == "Lung nodule"]
    for task in plan_scans(tiny, 0, "train", None)[:40]:
        sizes["tiny"] += [les.size_mm for les in scan_lesions(task)[3] if les.label == "Lung nodule"]
    assert differ > 10
    assert len(sizes["pointing"]) >= 5 and min(sizes["pointing"]) >= MIN_VISIBLE_NODULE_MM
    assert min(sizes["tiny"]) < MIN_VISIBLE_NODULE_MM  # CT-sized nodules in the default world


def test_pointing_fine_is_the_pointing_world_on_the_demo_grid() -> None:
    """Same patients, labels and lesions (drawn in mm before any grid), written on the demo world's CT grid."""
    fine, point, demo = get_preset("pointing_fine"), get_preset("pointing"), get_preset("demo")
    assert (fine.ct_shape, fine.ct_spacing) == (demo.ct_shape, demo.ct_spacing)
    assert (fine.findings, fine.nodules, fine.n_train, fine.n_valid) == ("independent", "visible", point.n_train,
                                                                        point.n_valid)
    for a, b in zip(plan_scans(fine, 0, "train", None)[:20], plan_scans(point, 0, "train", None)[:20]):
        (_, labels_a, _, lesions_a), (_, labels_b, _, lesions_b) = scan_lesions(a), scan_lesions(b)
        assert labels_a == labels_b
        assert [(les.label, les.size_mm) for les in lesions_a] == [(les.label, les.size_mm) for les in lesions_b]
