"""Radiographs: orientation, and radiograph-visible findings change the projection where they should."""

from __future__ import annotations

import numpy as np

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


def test_ct_only_findings_barely_show() -> None:
    """Coronary calcification (CT-only) changes a radiograph far less than a consolidation does."""
    anatomy, lesions = _patient(5, ["Coronary artery wall calcification", "Consolidation"])
    coronary = np.abs(_diff(anatomy, lesions, "Coronary artery wall calcification")).sum()
    consolidation = np.abs(_diff(anatomy, lesions, "Consolidation")).sum()
    assert coronary < 0.2 * consolidation


def test_gallery_patients_differ_from_each_other() -> None:
    a0, _, _ = xray_patient(0, 0)
    a1, _, _ = xray_patient(0, 1)
    assert a0.body_ax != a1.body_ax and a0.vessel_seed != a1.vessel_seed
