"""Radiographs: orientation, and radiograph-visible findings change the projection where they should."""

from __future__ import annotations

import numpy as np
import pytest

from ctxray.labels import load_labels
from ctxray.synth.anatomy import sample_anatomy
from ctxray.synth.atlas import Atlas
from ctxray.synth.findings import build_lesions
from ctxray.synth.render import render_xray, xray_grid
from ctxray.synth.xray_gallery import xray_patient

SIZE = RENDER = 64


def _patient(seed: int, positive: list[str]):
    anatomy = sample_anatomy(np.random.default_rng(seed))
    anatomy.extra["min_nodule_mm"] = 15.0  # a nodule a radiograph can show
    labels = {n: int(n in positive) for n in load_labels().names}
    lesions = build_lesions(anatomy, labels, np.random.default_rng(seed + 100), Atlas(anatomy))
    return anatomy, lesions


def _image_position(anatomy, centre_mm) -> tuple[float, float]:
    """(row, column) of a mm point on the radiograph: superior up, patient's right on the image left."""
    grid = xray_grid(anatomy, RENDER)
    v = grid.to_voxel(np.asarray(centre_mm))
    scale = SIZE / RENDER
    return (RENDER - 1 - v[0]) * scale, (RENDER - 1 - v[2]) * scale


def _diff(anatomy, lesions, label: str) -> np.ndarray:
    with_ = render_xray(anatomy, lesions, SIZE, RENDER, noise_seed=1).astype(float)
    without = render_xray(anatomy, lesions, SIZE, RENDER, noise_seed=1, exclude=[label]).astype(float)
    return with_ - without


def test_heart_projects_on_the_image_right() -> None:
    """Patient's left (heart apex) appears on the image's right, the apices at the top."""
    anatomy, _ = _patient(3, [])
    img = render_xray(anatomy, [], SIZE, RENDER, noise_seed=0).astype(float)
    row, col = _image_position(anatomy, anatomy.heart_centre)
    assert col > SIZE / 2, "the heart (patient's left) must be on the image right"
    apex_row, _ = _image_position(anatomy, (anatomy.shift[0] + anatomy.apex - 20, anatomy.shift[1], 0.0))
    assert apex_row < row, "the lung apices must be above the heart"
    # the lungs are darker than the mediastinum at the heart's height
    r = int(row)
    lung_col = int(_image_position(anatomy, (0.0, 0.0, anatomy.shift[2] + anatomy.cavity_ax * 0.6))[1])
    assert img[r - 4:r + 4, lung_col - 2:lung_col + 3].mean() < img[r - 4:r + 4, int(col) - 2:int(col) + 3].mean()


def test_effusion_changes_the_right_base() -> None:
    for side in ("right", "left"):
        for seed in range(20):
            anatomy, lesions = _patient(seed, ["Pleural effusion"])
            if [x.laterality for x in lesions] == [side]:
                break
        else:
            raise AssertionError(f"no {side}-only effusion in 20 seeds")
        d = np.abs(_diff(anatomy, lesions, "Pleural effusion"))
        assert d.max() > 15, "an effusion must be visible on the radiograph"
        rows, cols = np.indices(d.shape)
        centre_col = (d * cols).sum() / d.sum()
        centre_row = (d * rows).sum() / d.sum()
        if side == "right":
            assert centre_col < SIZE / 2, "a right effusion shows on the image's left"
        else:
            assert centre_col > SIZE / 2, "a left effusion shows on the image's right"
        heart_row, _ = _image_position(anatomy, anatomy.heart_centre)
        assert centre_row > heart_row - 8, "an effusion layers at the lung base"


def test_nodule_and_consolidation_change_the_projection_at_their_place() -> None:
    for label, seed in (("Lung nodule", 7), ("Consolidation", 8)):
        anatomy, lesions = _patient(seed, [label])
        d = np.abs(_diff(anatomy, lesions, label))
        assert d.max() > 10, f"{label}: invisible on the radiograph"
        peak = np.unravel_index(np.argmax(d), d.shape)
        dists = [np.hypot(*(np.array(peak) - _image_position(anatomy, les.centre_mm))) for les in lesions]
        assert min(dists) < 8, f"{label}: strongest change {min(dists):.1f} px from the lesion"


@pytest.mark.parametrize("label", ["Coronary artery wall calcification", "Pulmonary fibrotic sequela"])
def test_ct_only_findings_barely_show(label: str) -> None:
    """A CT-only finding changes a radiograph far less than a consolidation does."""
    anatomy, lesions = _patient(5, [label, "Consolidation"])
    ct_only = np.abs(_diff(anatomy, lesions, label)).sum()
    consolidation = np.abs(_diff(anatomy, lesions, "Consolidation")).sum()
    assert ct_only < 0.2 * consolidation


def test_gallery_patients_differ_from_each_other() -> None:
    a0, _, _ = xray_patient(0, 0)
    a1, _, _ = xray_patient(0, 1)
    assert a0.body_ax != a1.body_ax and a0.vessel_seed != a1.vessel_seed


# --- X-ray-visible findings at the demo's radiograph grid (128 px, projected at 128) ---------------------------

DEMO = 128
# Contrast of each finding in its own region (95th percentile of |with - without| in gray levels, 0-255): the
# floor a patient must reach, about half the smallest of 8 patients measured when the test was written
# (minimum / median there: medical material 25 / 157, cardiomegaly 16 / 23, hernia 29 / 35, atelectasis 11 / 21,
# nodule 7 / 24, opacity 12 / 22, effusion 21 / 34, consolidation 38 / 54). Emphysema is checked separately:
# its signs are the whole lung field and the diaphragm, not one spot.
REGION_CONTRAST = {"Medical material": 12.0, "Cardiomegaly": 8.0, "Hiatal hernia": 14.0, "Atelectasis": 5.0,
                   "Lung nodule": 4.0, "Lung opacity": 6.0, "Pleural effusion": 10.0, "Consolidation": 19.0}


def _xray_patient(seed: int, label: str):
    """A radiograph subject (nodules sized as the gallery draws them) with only ``label``."""
    from ctxray.synth.findings import MIN_VISIBLE_NODULE_MM, NODULE_SIZE_SCALE

    anatomy = sample_anatomy(np.random.default_rng(seed + 500))
    anatomy.extra.update(min_nodule_mm=MIN_VISIBLE_NODULE_MM, nodule_size_scale=NODULE_SIZE_SCALE)
    labels = {n: int(n == label) for n in load_labels().names}
    return anatomy, build_lesions(anatomy, labels, np.random.default_rng(seed + 900), Atlas(anatomy))


def _demo_diff(anatomy, lesions, label: str) -> np.ndarray:
    with_ = render_xray(anatomy, lesions, DEMO, DEMO, noise_seed=1).astype(float)
    return with_ - render_xray(anatomy, lesions, DEMO, DEMO, noise_seed=1, exclude=[label]).astype(float)


def _pixel(anatomy, centre_mm) -> tuple[float, float]:
    v = xray_grid(anatomy, DEMO).to_voxel(np.asarray(centre_mm))
    return DEMO - 1 - v[0], DEMO - 1 - v[2]


@pytest.mark.parametrize("label", sorted(REGION_CONTRAST))
def test_xray_visible_findings_change_their_region(label: str) -> None:
    """Each X-ray-visible finding changes the radiograph where it lies (focal ones hardly anywhere else)."""
    from ctxray.synth.render import XRAY_FOV_MM

    for seed in range(3):
        anatomy, lesions = _xray_patient(seed, label)
        d = _demo_diff(anatomy, lesions, label)
        rows, cols = np.indices(d.shape)
        region = np.zeros(d.shape, dtype=bool)
        for lesion in lesions:
            r0, c0 = _pixel(anatomy, lesion.centre_mm)
            radius_px = max(10.0, min(lesion.size_mm, 60.0) / 2) / (XRAY_FOV_MM / DEMO)
            region |= np.hypot(rows - r0, cols - c0) <= radius_px
        contrast = np.percentile(np.abs(d[region]), 95)
        assert contrast >= REGION_CONTRAST[label], f"{label} (seed {seed}): contrast {contrast:.1f} in its region"
        if label in ("Lung nodule", "Hiatal hernia"):  # focal: nothing changes elsewhere
            assert np.abs(d[~region]).mean() < 0.1 * np.abs(d[region]).mean(), f"{label}: change outside its region"


def test_hiatal_hernia_is_a_retrocardiac_gas_bubble_with_a_fluid_level() -> None:
    """The hernia's gas projects through the heart shadow left of the spine, dark above, fluid below."""
    for seed in range(3):
        anatomy, lesions = _xray_patient(seed, "Hiatal hernia")
        d = _demo_diff(anatomy, lesions, "Hiatal hernia")
        dark = d < -10
        assert dark.sum() >= 6, "the hernia's gas must show as a lucency"
        rows, cols = np.nonzero(dark)
        heart_row, heart_col = _pixel(anatomy, anatomy.heart_centre)
        spine_col = _pixel(anatomy, anatomy.shift)[1]
        assert cols.mean() > spine_col, "the gas lies left of the spine (image right)"
        assert abs(rows.mean() - heart_row) < 25, "the gas lies at the level of the heart"
        # air-fluid level: below the lucency the sac is denser than the lung it displaced (or unchanged)
        below = d[int(rows.max()) + 1:int(rows.max()) + 4, int(cols.min()):int(cols.max()) + 1]
        assert below.mean() > -2.0


def test_emphysema_hyperinflates_and_darkens_the_lungs() -> None:
    """Emphysema: the lung fields darken and the hemidiaphragms sit lower and flatter (graded by severity)."""
    from ctxray.synth.canvas import LUNGS, Tissue
    from ctxray.synth.render import paint_patient

    for seed in range(3):
        anatomy, lesions = _xray_patient(seed, "Emphysema")
        grid = xray_grid(anatomy, DEMO)
        maps = [paint_patient(anatomy, lesions, grid, exclude=ex).tissue for ex in ((), ("Emphysema",))]
        centre, radii = anatomy.lung_box("right")
        x = grid.to_voxel(np.asarray(centre))[2]
        cols = slice(int(x - 0.3 * radii[2] / grid.spacing[2]), int(x + 0.3 * radii[2] / grid.spacing[2]) + 1)
        # top of the liver under the middle of the right lung (index 0 of D is inferior)
        top = [np.flatnonzero((m[:, :, cols] == Tissue.LIVER).any(axis=(1, 2))).max() for m in maps]
        assert (top[1] - top[0]) * grid.spacing[0] >= 9.0, f"seed {seed}: the right hemidiaphragm must be lower"
        d = _demo_diff(anatomy, lesions, "Emphysema")
        for side in ("right", "left"):
            dome = anatomy.shift[0] + (anatomy.dome_r if side == "right" else anatomy.dome_l)
            row, col = _pixel(anatomy, (dome, 0.0, anatomy.lung_box(side)[0][2]))
            band = d[int(row):int(row) + 12, int(col) - 6:int(col) + 7]
            assert band.min() < -15, f"seed {seed}, {side}: lung must replace the top of the dome"
        fields = np.isin(maps[1], LUNGS).any(axis=1)[::-1, ::-1]  # the normal lung fields, image orientation
        assert d[fields].mean() < -2.0, "the lung fields must be darker (hyperlucent)"
