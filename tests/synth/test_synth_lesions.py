"""Lesion builders: each draws its own label's lesion, repeatably, and paints only where it may."""

from __future__ import annotations

import numpy as np
import pytest

from ctxray.synth import lesions, lesions_lung
from ctxray.synth.anatomy import sample_anatomy
from ctxray.synth.atlas import Atlas
from ctxray.synth.canvas import LUNGS, Spheres, Tissue
from ctxray.synth.findings import BUILDERS

LATERALITY = {"right", "left", "bilateral", "midline"}


def _facts(found: list[lesions.Lesion]) -> list[tuple]:
    return [(x.label, x.kind, x.location, x.laterality, x.centre_mm, x.size_mm, sorted(x.attrs)) for x in found]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_builder_draws_its_own_label_repeatably(seed):
    assert {b.__module__ for b in BUILDERS.values()} == {lesions.__name__, lesions_lung.__name__}
    for name, build in BUILDERS.items():
        runs = []
        for _ in range(2):
            anatomy = sample_anatomy(np.random.default_rng(100 + seed))
            runs.append(build(anatomy, Atlas(anatomy), np.random.default_rng(seed), {name: 1}))
        found = runs[0]
        assert found and all(x.label == name for x in found), name
        assert all(x.shapes and x.size_mm > 0 and x.laterality in LATERALITY for x in found), name
        assert all(np.isfinite(x.centre_mm).all() for x in found), name
        assert _facts(runs[0]) == _facts(runs[1]), name  # same seeds, same lesions


def test_lung_lesions_paint_only_over_lung_and_airway():
    lung_side = set(LUNGS) | {Tissue.AIRWAY}
    for seed in range(3):
        anatomy = sample_anatomy(np.random.default_rng(seed))
        atlas = Atlas(anatomy)
        for name, build in BUILDERS.items():
            if build.__module__ != lesions_lung.__name__:
                continue
            for lesion in build(anatomy, atlas, np.random.default_rng(seed), {name: 1}):
                for shape in lesion.shapes:
                    within = getattr(shape, "within", None)
                    assert within is not None, (name, shape)  # never paints over whatever is there
                    if name != "Emphysema":  # hyperinflation: the lung takes over the top of the dome below it
                        assert set(within) <= lung_side, (name, within)


def test_cardiomegaly_enlarges_the_heart_other_builders_read():
    anatomy = sample_anatomy(np.random.default_rng(5))
    normal = lesions.heart_radii(anatomy, {"Cardiomegaly": 0})
    assert normal == tuple(anatomy.heart_radii)
    (big,) = lesions.cardiomegaly(anatomy, Atlas(anatomy), np.random.default_rng(0), {"Cardiomegaly": 1})
    factor = anatomy.extra["heart_scale"]
    assert 1.22 <= factor <= 1.42
    assert lesions.heart_radii(anatomy, {"Cardiomegaly": 1}) == pytest.approx(tuple(r * factor for r in normal))
    assert 0.4 < big.attrs["cardiothoracic_ratio"] < 1.0
    fluid = lesions.pericardial_effusion(anatomy, Atlas(anatomy), np.random.default_rng(0), {"Cardiomegaly": 1})
    assert fluid[0].centre_mm == anatomy.extra["heart_centre_enlarged"]  # the effusion wraps the enlarged heart


def test_lymph_nodes_sit_at_named_stations_on_their_side():
    for seed in range(4):
        anatomy = sample_anatomy(np.random.default_rng(seed))
        for node in lesions.lymphadenopathy(anatomy, Atlas(anatomy), np.random.default_rng(seed), {}):
            station = node.location.removesuffix(" station")
            assert station in lesions.STATIONS
            if station.startswith(("right", "left")):
                assert node.laterality == station.split()[0]
            assert 14 <= node.attrs["short_axis_mm"] <= 28


def test_fibrotic_sequela_is_two_scars_of_thick_bands_in_one_zone():
    """Two subpleural scars of line-like bands, on one side: not a single round haze (an opacity at 5 mm)."""
    for seed in range(3):
        anatomy = sample_anatomy(np.random.default_rng(seed))
        scars = lesions_lung.pulmonary_fibrotic_sequela(anatomy, Atlas(anatomy), np.random.default_rng(seed), {})
        assert len(scars) == 2 and len({s.laterality for s in scars}) == 1
        for scar in scars:
            assert 5 <= len(scar.shapes) <= 8
            for band in scar.shapes:  # tubes of balls, >= 2 mm radius, >= 25 mm long, dense (no additive haze)
                assert isinstance(band, Spheres) and band.tissue == Tissue.LESION and band.radii.min() >= 2.0
                assert np.linalg.norm(band.centres[-1] - band.centres[0]) >= 25.0


def test_sternotomy_wires_loop_around_the_sternum():
    for seed in range(40):
        anatomy = sample_anatomy(np.random.default_rng(seed))
        (dev,) = lesions.medical_material(anatomy, Atlas(anatomy), np.random.default_rng(seed), {})
        if dev.kind != "sternotomy wires":
            continue
        for wire in dev.shapes:  # a ring in an axial plane, ~36 mm across the sternum (15 mm half-width)
            assert np.ptp(wire.centres[:, 0]) == 0.0 and np.ptp(wire.centres[:, 2]) >= 30.0
            assert wire.value >= 2000 and wire.tissue == Tissue.METAL
        return
    pytest.fail("no sternotomy wires in 40 draws")
