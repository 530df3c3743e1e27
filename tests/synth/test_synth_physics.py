"""Physics of the synthetic CT: tissue densities in HU, noise, and every lesion visible where recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ctxray.labels import load_labels
from ctxray.synth.anatomy import sample_anatomy
from ctxray.synth.atlas import Atlas
from ctxray.synth.canvas import Grid, Tissue
from ctxray.synth.findings import build_lesions
from ctxray.synth.render import Reconstruction, acquire, paint_patient, render_ct

GRID = Grid.centred((32, 64, 64), (10.0, 5.4, 5.4))


def _core(mask: np.ndarray) -> np.ndarray:
    """The mask without its border voxels (no partial-volume blur from neighbours)."""
    return ndimage.binary_erosion(mask, iterations=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_hounsfield_units(seed: int) -> None:
    anatomy = sample_anatomy(np.random.default_rng(seed))
    canvas = paint_patient(anatomy, [], GRID)
    hu = render_ct(anatomy, [], GRID, noise_seed=seed).astype(np.float32)
    t = canvas.tissue
    lung = _core((t == Tissue.LUNG_R) | (t == Tissue.LUNG_L))
    ranges = {
        "lung": (lung, -900, -720),
        "heart": (_core(t == Tissue.HEART), 25, 60),
        "fat": (_core(t == Tissue.FAT), -130, -40),
        "liver": (_core(t == Tissue.LIVER), 45, 70),
        "bone": (t == Tissue.BONE, 250, 1200),
        "outside": (_core(t == Tissue.AIR), -1024, -950),
    }
    for name, (mask, lo, hi) in ranges.items():
        assert mask.sum() > 20, f"{name}: too few voxels"
        mean = float(hu[mask].mean())
        assert lo <= mean <= hi, f"{name}: mean {mean:.0f} HU outside [{lo}, {hi}]"
    # lung parenchyma has texture (vessels, gradient), not a flat value
    assert hu[lung].std() > 40
    # cortical bone reaches compact-bone densities
    assert np.percentile(hu[t == Tissue.BONE], 95) > 500


def test_noise_and_kernel() -> None:
    anatomy = sample_anatomy(np.random.default_rng(5))
    painted = paint_patient(anatomy, [], GRID).hu
    soft = acquire(painted, anatomy, GRID, 1, Reconstruction("soft")).astype(np.float32)
    sharp = acquire(painted, anatomy, GRID, 1, Reconstruction("sharp")).astype(np.float32)
    air = _core(paint_patient(anatomy, [], GRID).tissue == Tissue.AIR)
    air &= soft > -1000  # clipping at -1024 hides part of the noise; keep the liver-free far field simple
    liver = _core(paint_patient(anatomy, [], GRID).tissue == Tissue.LIVER)
    assert 3 < soft[liver].std() < sharp[liver].std()
    assert not np.array_equal(acquire(painted, anatomy, GRID, 2), acquire(painted, anatomy, GRID, 3))


def _patients_covering_all_labels(tiny_world: Path) -> dict[str, tuple]:
    """For each label, one tiny-world patient that has it: (anatomy, lesions) rebuilt from the world's seeds."""
    from ctxray.synth.presets import get_preset
    from ctxray.synth.scans import ScanTask, scan_lesions

    found: dict[str, tuple] = {}
    preset = get_preset("tiny")
    for pid in range(1, 200):
        task = ScanTask(tiny_world, "train", pid, 0, 1, preset, seed=0)
        anatomy, labels, _age, lesions = scan_lesions(task)
        for name, v in labels.items():
            if v and name not in found:
                found[name] = (anatomy, lesions)
        if len(found) == len(load_labels()):
            break
    return found


def test_every_label_is_rendered_where_recorded(tiny_world: Path) -> None:
    found = _patients_covering_all_labels(tiny_world)
    assert set(found) == set(load_labels().names)
    grid = Grid.centred((40, 80, 80), (8.0, 4.3, 4.3))
    spacing = np.asarray(grid.spacing)
    for name, (anatomy, lesions) in found.items():
        with_ = paint_patient(anatomy, lesions, grid).hu
        without = paint_patient(anatomy, lesions, grid, exclude=[name]).hu
        diff = np.abs(with_ - without)
        changed = diff > 60
        assert diff.max() > 100, f"{name}: lesion changes the volume by at most {diff.max():.0f} HU"
        # the change is local: the lesion does not repaint the whole volume
        assert changed.mean() < 0.25, f"{name}: {changed.mean():.0%} of the volume changed"
        idx = np.argwhere(changed)
        for les in (x for x in lesions if x.label == name):
            c = grid.to_voxel(np.asarray(les.centre_mm))
            if les.laterality in ("bilateral", "midline"):  # a summary centre (of a shell, of plaques): in the box
                assert np.all(c >= idx.min(0) - 3) and np.all(c <= idx.max(0) + 3), f"{name}: centre {c}"
                continue
            nearest = np.sqrt((((idx - c) * spacing) ** 2).sum(axis=1)).min()
            assert nearest <= 20 + les.size_mm / 2, f"{name}: nearest change {nearest:.0f} mm from the centre"
            side = les.centre_mm[2] - anatomy.shift[2]
            if les.laterality in ("right", "left") and abs(side) > 30:
                assert (side > 0) == (les.laterality == "right"), f"{name}: laterality {les.laterality}, x {side:.0f}"


def test_ground_truth_labels_have_lesions(tiny_world: Path) -> None:
    for line in (tiny_world / "ct-rate" / "ground_truth.jsonl").read_text().splitlines():
        rec = json.loads(line)
        present = {les["label"] for les in rec["lesions"]}
        positive = {n for n, v in rec["labels"].items() if v}
        assert present == positive, rec["VolumeName"]


def test_lesions_sit_in_their_organ() -> None:
    anatomy = sample_anatomy(np.random.default_rng(11))
    labels = {n: 0 for n in load_labels().names}
    labels.update({"Lung nodule": 1, "Pleural effusion": 1, "Consolidation": 1})
    lesions = build_lesions(anatomy, labels, np.random.default_rng(3), Atlas(anatomy))
    canvas = paint_patient(anatomy, [], GRID)
    for les in lesions:
        if les.label in ("Lung nodule", "Consolidation"):
            v = np.round(GRID.to_voxel(np.asarray(les.centre_mm))).astype(int)
            window = canvas.tissue[tuple(slice(max(i - 1, 0), i + 2) for i in v)]
            assert np.isin(window, [Tissue.LUNG_R, Tissue.LUNG_L]).any(), les
            side = "right" if les.centre_mm[2] > anatomy.shift[2] else "left"
            assert les.laterality == side and side in les.location


def test_descending_aorta_runs_beside_the_spine_not_through_it() -> None:
    """The descending aorta is left-anterolateral to the vertebral bodies: its centreline is blood, never bone
    (it ran through the vertebrae of slim patients, and plaques on its wall merged with them at a 5 mm grid)."""
    grid = Grid.centred((64, 128, 128), (5.0, 2.7, 2.7))
    for seed in range(4):
        anatomy = sample_anatomy(np.random.default_rng(seed))
        canvas = paint_patient(anatomy, [], grid)
        a, b = anatomy.aorta[4], anatomy.aorta[5]
        pts = a + (b - a) * np.linspace(0, 1, 40)[:, None]
        v = np.round(grid.to_voxel(pts)).astype(int)
        v = v[((v >= 0) & (v < grid.shape)).all(axis=1)]
        assert (canvas.tissue[v[:, 0], v[:, 1], v[:, 2]] == Tissue.VESSEL).all(), f"seed {seed}"
