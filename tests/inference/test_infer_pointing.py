"""The pointing game: hits, margins, the random-point baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctxray.inference.pointing import Lesion, PointingCase, format_table, lesion_radius_mm, map_peak, pointing_game


def test_map_peak_ignores_nan():
    m = np.zeros((4, 5, 6), np.float32)
    m[1, 2, 3] = 2.0
    m[0, 0, 0] = np.nan
    assert map_peak(m) == (1, 2, 3)


def test_lesion_radius():
    assert lesion_radius_mm(12.0) == 6.0
    assert lesion_radius_mm([10, 30, 20]) == 15.0
    assert lesion_radius_mm(None) == 0.0


def test_hits_respect_radius_margin_and_spacing():
    shape, spacing = (20, 20, 20), (5.0, 1.0, 1.0)
    lesion = Lesion("Lung nodule", (10, 10, 10), radius_mm=3.0)
    # 2 voxels away along z = 10 mm: a miss with margin 5 (3 + 5 < 10), a hit with margin 7
    case = PointingCase("v", "Lung nodule", (12, 10, 10), [lesion], shape, spacing)
    assert pointing_game([case], margin_mm=5.0)["Lung nodule"].hits == 0
    assert pointing_game([case], margin_mm=7.0)["Lung nodule"].hits == 1
    # the same voxel distance along x is 2 mm: a hit even with margin 0
    case_x = PointingCase("v", "Lung nodule", (10, 10, 12), [lesion], shape, spacing)
    assert pointing_game([case_x], margin_mm=0.0)["Lung nodule"].hits == 1
    # any lesion of the label counts
    far = Lesion("Lung nodule", (0, 0, 0), 1.0)
    case2 = PointingCase("w", "Lung nodule", (0, 1, 0), [lesion, far], shape, spacing)
    res = pointing_game([case, case2], margin_mm=5.0)["Lung nodule"]
    assert (res.n, res.hits, res.rate) == (2, 1, 0.5)


def test_random_baseline_matches_the_sphere_fraction():
    shape, spacing = (40, 40, 40), (1.0, 1.0, 1.0)
    r = 8.0
    case = PointingCase("v", "Emphysema", (20, 20, 20), [Lesion("Emphysema", (20, 20, 20), r)], shape, spacing)
    res = pointing_game([case], margin_mm=0.0, n_random=20000, seed=1)["Emphysema"]
    expected = (4 / 3) * math.pi * r**3 / 40**3
    assert res.baseline == pytest.approx(expected, rel=0.1)
    assert "| Emphysema | 1 | 1 | 1.000 |" in format_table({"Emphysema": res}, 0.0)
    assert math.isnan(res.body_baseline)  # no body points given
    # body points all inside the sphere: the body baseline is 1
    inside = np.array([[20, 20, 20], [22, 21, 19]] * 10)
    case_b = PointingCase("v", "Emphysema", (0, 0, 0), case.lesions, shape, spacing, body_points=inside)
    res_b = pointing_game([case_b], margin_mm=0.0)["Emphysema"]
    assert res_b.body_baseline == 1.0 and res_b.hits == 0


def test_case_without_lesion_is_an_error():
    with pytest.raises(ValueError, match="no lesion"):
        pointing_game([PointingCase("v", "A", (0, 0, 0), [], (2, 2, 2), (1, 1, 1))], margin_mm=1)


def test_pointing_pipeline_on_a_small_world(tmp_path):
    """Ground-truth rows -> model decisions -> maps on the scan grid -> hits, with the world's conventions."""
    import json

    import torch

    from ctxray.data.spec import PreprocessSpec
    from ctxray.inference.api import CTModel
    from ctxray.inference.pointing import collect_cases, read_ground_truth
    from ctxray.labels import load_labels

    from .infer_helpers import ConvToy, write_nifti

    shape, spacing = (24, 40, 36), (6.0, 3.0, 3.5)
    folder = tmp_path / "W" / "ct-rate" / "dataset" / "valid_fixed" / "valid_1" / "valid_1_a"
    folder.mkdir(parents=True)
    rows = []
    labels = load_labels()
    for i, centre in enumerate([(6, 30, 8), (17, 9, 27)]):
        z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
        blob = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 4
        write_nifti(folder / f"valid_1_a_{i + 1}.nii.gz", np.where(blob, 900.0, -900.0), spacing)
        present = {n: int(n in ("Lung nodule", "Emphysema")) for n in labels.names}
        lesions = [{"label": "Lung nodule", "center_zyx_vox": list(centre), "size_mm": 8.0}]  # emphysema: none
        rows.append({"VolumeName": f"valid_1_a_{i + 1}.nii.gz", "split": "valid", "labels": present,
                     "lesions": lesions})
    (tmp_path / "W" / "ct-rate" / "ground_truth.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    spec = PreprocessSpec("toy", spacing_zyx=(6.0, 6.0, 6.0), shape_zyx=(24, 24, 24), hu_min=-1000, hu_max=1000)
    model = CTModel(ConvToy(), tokenizer=None, spec=spec, label_set=labels, thresholds={})
    e = torch.zeros(len(labels), 4)
    model._prompts = (e.clone(), e.clone())
    model._prompts[0][:, 0], model._prompts[1][:, 1] = 1.0, 1.0
    gt, paths = read_ground_truth(tmp_path / "W", "valid")
    assert len(gt) == 2 and len(paths) == 2
    model.thresholds = {n: 0.0 for n in labels.names}  # every label decided positive
    cases, counts = collect_cases(model, gt, paths)
    assert counts["Lung nodule"] == {"gt_pos": 2, "tp": 2, "tp_localised": 2}
    assert counts["Emphysema"] == {"gt_pos": 2, "tp": 2, "tp_localised": 0}
    res = pointing_game(cases, margin_mm=6.0)
    assert set(res) == {"Lung nodule"} and res["Lung nodule"].hits == 2
    assert res["Lung nodule"].baseline < 0.1
    # the "body" here is the bright blob itself, so a random body point nearly always hits
    assert res["Lung nodule"].body_baseline > 0.8
    model.thresholds = {n: 1.01 for n in labels.names}  # nothing positive: no true positives
    cases, counts = collect_cases(model, gt, paths)
    assert cases == [] and counts["Lung nodule"]["tp"] == 0
    cases, _ = collect_cases(model, gt, paths, require_decision=False)
    assert len(cases) == 2


def test_a_shell_region_hits_the_fluid_not_the_heart():
    """Pericardial fluid is a shell: a point at the heart's centre misses, one in the fluid hits."""
    from ctxray.inference.pointing import Region

    spacing = (1.0, 1.0, 1.0)
    shell = Region((0.0, 0.0, 0.0), (60.0, 60.0, 70.0), rot=0.5, inner_radii_mm=(45.0, 45.0, 55.0))
    lesion = Lesion("Pericardial effusion", (100, 100, 100), radius_mm=7.5, region=shell)
    centre, fluid = np.array([[100.0, 100, 100]]), np.array([[152.0, 100, 100]])  # 52 mm up: between 45 and 60
    assert not lesion.contains(centre, spacing, 10.0)[0]
    assert lesion.contains(fluid, spacing, 0.0)[0]
    assert not lesion.contains(np.array([[175.0, 100, 100]]), spacing, 10.0)[0]  # 75 mm: beyond 60 + 10
    assert lesion.contains(np.array([[168.0, 100, 100]]), spacing, 10.0)[0]
    # the rotation about z turns the long (x) axis: 66 mm along x is outside unless rotated onto it
    along_x = np.array([[100.0, 100, 166]])
    assert not Lesion("P", (100, 100, 100), region=Region((0, 0, 0), (60, 60, 70), rot=np.pi / 2)).contains(
        along_x, spacing, 0.0)[0]
    assert Lesion("P", (100, 100, 100), region=Region((0, 0, 0), (60, 60, 70))).contains(along_x, spacing, 0.0)[0]


def test_a_layer_region_is_cut_by_its_plane():
    """A pleural effusion: the part of an ellipsoid behind a coronal plane (y <= offset), off-centre."""
    from ctxray.inference.pointing import Region

    layer = Region((0.0, -40.0, 0.0), (80.0, 50.0, 60.0), plane=((0.0, 1.0, 0.0), -30.0))
    lesion = Lesion("Pleural effusion", (50, 50, 50), radius_mm=10.0, region=layer)
    spacing = (2.0, 1.0, 1.0)
    lateral = np.array([[50.0, 50 - 80, 50 + 30]])  # y = -80 mm, 30 mm to the side: in the layer, far from the centre
    assert lesion.contains(lateral, spacing, 0.0)[0]
    assert np.linalg.norm((lateral[0] - 50) * spacing) > 10.0 + 10.0  # the old ball rule would miss it
    front = np.array([[50.0, 50 - 55, 50]])  # y = -55: in the ellipsoid, 15 mm in front of the plane (y <= -70)
    assert not lesion.contains(front, spacing, 10.0)[0]
    assert lesion.contains(front, spacing, 16.0)[0]
    res = pointing_game([PointingCase("v", "Pleural effusion", tuple(lateral[0]), [lesion], (60, 100, 120), spacing)],
                        margin_mm=0.0)["Pleural effusion"]
    assert res.hits == 1


@pytest.mark.parametrize("label", ["Pericardial effusion", "Pleural effusion"])
def test_the_recorded_region_is_where_the_world_paints_the_fluid(label):
    """The ground truth's region of a shell or layer holds every voxel the lesion paints, and is mostly that lesion
    (measured: all painted voxels inside, 64-79 % of the region painted, on 8 patients; the old ball of half the
    size + 10 mm held 0 % of the pericardial and 19-29 % of the pleural fluid)."""
    from ctxray.inference.pointing import Region
    from ctxray.synth.canvas import Grid
    from ctxray.synth.presets import get_preset
    from ctxray.synth.render import paint_patient
    from ctxray.synth.scans import ScanTask, lesion_record, scan_lesions

    preset = get_preset("tiny")
    grid = Grid.centred(preset.ct_shape, preset.ct_spacing)
    checked = 0
    for pid in range(1, 200):
        anatomy, labels, _, lesions = scan_lesions(ScanTask(None, "train", pid, 0, 1, preset, seed=0))
        if not labels.get(label):
            continue
        painted = np.abs(paint_patient(anatomy, lesions, grid).hu
                         - paint_patient(anatomy, lesions, grid, exclude=[label]).hu) > 30
        records = [lesion_record(les, grid) for les in lesions if les.label == label]
        found = [Lesion(label, tuple(r["center_zyx_vox"]), 0.0, Region.from_record(r["region"])) for r in records]
        points = np.indices(grid.shape).reshape(3, -1).T
        inside = np.any([les.contains(points, grid.spacing, 0.0) for les in found], axis=0)
        assert inside[painted.reshape(-1)].mean() >= 0.99
        assert painted.reshape(-1)[inside].mean() >= 0.5
        checked += 1
        if checked == 2:
            break
    assert checked == 2


def test_comparison_table_pools_the_focal_findings():
    from ctxray.inference.pointing import PointingResult, format_comparison, pooled

    def res(label, n, hits, body):
        return PointingResult(label, n=n, hits=hits, body_baseline=body, best_possible=1.0)

    sup = {"gradcam": {"Lung nodule": res("Lung nodule", 4, 3, 0.01), "Cardiomegaly": res("Cardiomegaly", 6, 6, 0.2)}}
    biud = {"hirescam": {"Lung nodule": res("Lung nodule", 2, 0, 0.02)}}
    p = pooled(sup["gradcam"], ["Lung nodule", "Hiatal hernia"])
    assert (p.n, p.hits) == (4, 3) and p.body_baseline == pytest.approx(0.01)
    assert pooled(sup["gradcam"], ["Cardiomegaly", "Lung nodule"]).body_baseline == pytest.approx((0.04 + 1.2) / 10)
    table = format_comparison({"supervised": sup, "BIUD": biud}, ["Cardiomegaly", "Lung nodule"])
    assert "| supervised: n | supervised: gradcam | supervised: random, body | BIUD: n |" in table
    assert "| Lung nodule | 4 | 0.75 (1.00) | 0.010 | 2 | 0.00 (1.00) | 0.020 |" in table
    assert "| Cardiomegaly | 6 | 1.00 (1.00) | 0.200 | 0 | - | - |" in table
    assert "| **focal findings** | 4 | 0.75 (1.00) | 0.010 | 2 | 0.00 (1.00) | 0.020 |" in table
    assert "| **all labels** | 10 | 0.90 (1.00) |" in table


def test_regions_are_rebuilt_for_a_world_written_without_them(tiny_world):
    """An older world's ground truth lacks ``region``: rebuilt from the world's seed, equal to the recorded one."""
    from ctxray.inference.pointing import REGION_LABELS, add_missing_regions, read_ground_truth

    rows, _ = read_ground_truth(tiny_world)
    with_region = [r for r in rows if any(les["label"] in REGION_LABELS for les in r["lesions"])][:6]
    assert with_region
    stripped = [{**r, "lesions": [{k: v for k, v in les.items() if k != "region"} for les in r["lesions"]]}
                for r in with_region]
    assert add_missing_regions(tiny_world, stripped) == with_region
    assert all("region" not in les for r in stripped for les in r["lesions"])  # the input rows are not changed
    moved = [{**stripped[0], "lesions": [{**les, "center_mm": [v + 5 for v in les["center_mm"]]}
                                         for les in stripped[0]["lesions"]]}]
    with pytest.raises(ValueError, match="regenerate the world"):
        add_missing_regions(tiny_world, moved)


def _cell_spec():
    from ctxray.data.spec import PreprocessSpec

    return PreprocessSpec("cells", (4.0, 4.0, 4.0), (8, 16, 16))  # the scan below is on the same grid


def test_cell_targets_mark_the_lesion_cells_and_only_those():
    from ctxray.inference.pointing import FOCAL, cell_targets

    labels = ["Lung nodule", "Consolidation", "Emphysema", "Pleural effusion"]
    row = {"labels": {"Lung nodule": 1, "Consolidation": 1, "Emphysema": 1, "Pleural effusion": 0},
           "lesions": [
               # 2 mm across, inside cell (0, 1, 2) of a 2x4x4 grid (cells of 4 voxels = 16 mm): no cell centre lies
               # in it, so only its nearest cell is marked
               {"label": "Lung nodule", "center_zyx_vox": [1.0, 5.0, 9.0], "size_mm": 2.0},
               # 40 mm across about the centre of cell (1, 2, 1): its own centre and its 5 neighbours' (16 mm away;
               # the grid has no z + 1), not the diagonal ones (22.6 mm)
               {"label": "Consolidation", "center_zyx_vox": [5.5, 9.5, 5.5], "size_mm": 40.0},
               {"label": "Emphysema", "center_zyx_vox": [4.0, 8.0, 8.0], "size_mm": 10.0}]}
    t = cell_targets(row, labels, _cell_spec(), (2, 4, 4), (8, 16, 16), (4.0, 4.0, 4.0), localised=FOCAL)
    assert t.shape == (4, 2, 4, 4) and t.dtype == np.float32
    nodule = np.zeros((2, 4, 4))
    nodule[0, 1, 2] = 1
    np.testing.assert_array_equal(t[0], nodule)
    assert t[1].sum() == 6 and t[1][1, 2, 1] == 1 and t[1][0, 2, 1] == 1 and t[1][1, 1, 1] == 1
    assert t[1][1, 2, 2] == 1 and t[1][1, 1, 2] == 0 and t[1][1, 0, 1] == 0  # 16 mm: in; 22.6 and 32 mm: out
    assert np.isnan(t[2]).all()  # not in the localised set: unknown, not "nowhere"
    assert (t[3] == 0).all()  # absent: nowhere
    # the margin widens the lesion; without ``localised`` emphysema's nominal centre counts
    wide = cell_targets(row, labels, _cell_spec(), (2, 4, 4), (8, 16, 16), (4.0, 4.0, 4.0), margin_mm=20.0)
    assert wide[0].sum() > 1 and wide[2].sum() >= 1
    # a label present without a localised lesion is unknown everywhere
    row2 = {"labels": {"Lung nodule": 1}, "lesions": []}
    assert np.isnan(cell_targets(row2, labels[:1], _cell_spec(), (2, 4, 4), (8, 16, 16), (4.0,) * 3)).all()


def test_cell_targets_follow_the_left_right_axis():
    """Mirroring the lesion left-right mirrors its cells (the last axis is the scan's left-right axis)."""
    from ctxray.inference.pointing import cell_targets

    spec, grid = _cell_spec(), (2, 4, 4)
    left = {"labels": {"Lung nodule": 1}, "lesions": [{"label": "Lung nodule", "center_zyx_vox": [2, 6, 2],
                                                       "size_mm": 4.0}]}
    right = {"labels": {"Lung nodule": 1}, "lesions": [{"label": "Lung nodule", "center_zyx_vox": [2, 6, 13],
                                                        "size_mm": 4.0}]}
    a = cell_targets(left, ["Lung nodule"], spec, grid, (8, 16, 16), (4.0,) * 3)
    b = cell_targets(right, ["Lung nodule"], spec, grid, (8, 16, 16), (4.0,) * 3)
    np.testing.assert_array_equal(a[..., ::-1], b)
    assert a[0, 0, 1, 0] == 1
