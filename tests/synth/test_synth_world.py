"""The written world: CT-RATE layout and columns, NIfTI headers, X-ray gallery, determinism."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ctxray.labels import load_labels
from ctxray.synth.presets import get_preset
from ctxray.synth.scans import plan_scans, write_scan
from ctxray.synth.world import generate_world
from ctxray.synth.xray_gallery import write_xray_chunk

NAME = re.compile(r"^(train|valid)_(\d+)_([a-z])_(\d+)\.nii\.gz$")


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_ct_rate_layout_and_columns(tiny_world: Path) -> None:
    ds = tiny_world / "ct-rate" / "dataset"
    names = load_labels().names
    for split, long in (("train", "train"), ("valid", "validation")):
        cols, reports = _rows(ds / "radiology_text_reports" / f"{long}_reports.csv")
        assert cols == ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
        cols, labels = _rows(ds / "multi_abnormality_labels" / f"{split}_predicted_labels.csv")
        assert cols == ["VolumeName", *names]
        cols, meta = _rows(ds / "metadata" / f"{long}_metadata.csv")
        needed = {"VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept", "NumberofSlices"}
        assert needed <= set(cols)
        vols = [r["VolumeName"] for r in reports]
        assert vols == [r["VolumeName"] for r in labels] == [r["VolumeName"] for r in meta]
        p = get_preset("tiny")
        assert len(vols) == (p.n_train if split == "train" else p.n_valid)
        for v in vols:
            m = NAME.match(v)
            assert m and m.group(1) == split, v
            path = ds / f"{split}_fixed" / f"{split}_{m.group(2)}" / f"{split}_{m.group(2)}_{m.group(3)}" / v
            assert path.is_file(), path
        assert all(r["Findings_EN"] and r["Impressions_EN"] for r in reports)
        assert all(set(r[n] for n in names) <= {"0", "1"} for r in labels)
        scans = {v.rsplit("_", 1)[0] for v in vols}
        patients = {v.split("_")[1] for v in vols}
        assert len(scans) < len(vols), "some scan must have two reconstructions"
        assert len(patients) < len(scans), "some patient must have two scans"


def test_nifti_headers_match_metadata(tiny_world: Path) -> None:
    ds = tiny_world / "ct-rate" / "dataset"
    _, meta = _rows(ds / "metadata" / "train_metadata.csv")
    for row in meta[:6]:
        m = NAME.match(row["VolumeName"])
        path = ds / "train_fixed" / f"train_{m.group(2)}" / f"train_{m.group(2)}_{m.group(3)}" / row["VolumeName"]
        img = nib.load(path)
        sx, sy = json.loads(row["XYSpacing"])
        assert img.get_data_dtype() == np.int16
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (sx, sy, float(row["ZSpacing"])), rtol=1e-5)
        assert img.shape[2] == int(row["NumberofSlices"])
        data = np.asanyarray(img.dataobj)
        assert data.min() >= -1024 and data.max() <= 3071
        assert (data < -900).mean() > 0.2 and (data > 0).mean() > 0.05  # air around a body: already HU


def test_ground_truth_and_world_json(tiny_world: Path) -> None:
    gt = [json.loads(line) for line in (tiny_world / "ct-rate" / "ground_truth.jsonl").read_text().splitlines()]
    info = json.loads((tiny_world / "world.json").read_text())
    assert len(gt) == info["counts"]["ct_train"] + info["counts"]["ct_valid"]
    assert info["preset"] == "tiny" and info["seed"] == 0 and info["ct_shape_zyx"] == [32, 64, 64]
    shape = info["ct_shape_zyx"]
    for rec in gt:
        for les in rec["lesions"]:
            assert {"label", "center_zyx_vox", "center_mm", "size_mm", "laterality", "location"} <= set(les)
            assert all(-0.5 <= c <= n - 0.5 for c, n in zip(les["center_zyx_vox"], shape)), les


def test_xray_gallery(tiny_world: Path) -> None:
    names = load_labels().names
    cols, rows = _rows(tiny_world / "xray" / "reports.csv")
    assert cols == ["id", "subject_id", "split", "image_path", "report", *names]
    assert len(rows) == get_preset("tiny").n_xray
    hidden = [label.name for label in load_labels().labels if not label.xray_visible]
    assert all(r[n] == "0" for r in rows for n in hidden)
    visible = set(load_labels().xray_visible_names)
    assert sum(int(r[n]) for r in rows for n in visible) > 0
    img = np.asarray(Image.open(tiny_world / "xray" / rows[0]["image_path"]))
    assert img.shape == (64, 64) and img.dtype == np.uint8 and img.std() > 20
    assert {r["split"] for r in rows} <= {"train", "valid", "test"}


@pytest.mark.slow
def test_same_seed_same_bytes(tiny_world: Path, tmp_path: Path) -> None:
    """Regenerated with two worker processes: every file identical (order and workers do not matter)."""
    generate_world(tmp_path, preset="tiny", seed=0, workers=2)
    assert _hashes(tmp_path) == _hashes(tiny_world)


def test_different_seed_different_world(tiny_world: Path, tmp_path: Path) -> None:
    p = get_preset("tiny")
    task = plan_scans(p, 1, "train", tmp_path / "train_fixed")[0]
    vol1 = write_scan(task)[0]
    path = tmp_path / "train_fixed" / "train_1" / "train_1_a" / vol1["VolumeName"]
    ref = tiny_world / "ct-rate" / "dataset" / "train_fixed" / "train_1" / "train_1_a" / vol1["VolumeName"]
    assert path.read_bytes() != ref.read_bytes()
    rows = write_xray_chunk((tmp_path / "xray", p, 1, 0, 3))
    assert any((tmp_path / "xray" / r[3]).read_bytes() != (tiny_world / "xray" / r[3]).read_bytes() for r in rows)


@pytest.mark.parametrize("bad", ["huge", ""])
def test_unknown_preset_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="unknown synth preset"):
        generate_world(tmp_path, preset=bad)


def test_headroom_world_extends_the_ablation_world(tmp_path: Path) -> None:
    """The headroom preset is the ablation world with more training patients: its first training scans and its
    validation split are the ablation world's (planned alike, rendered to the same bytes)."""
    small, large = get_preset("ablation"), get_preset("headroom")
    assert large.n_train == 10 * small.n_train and large.n_valid == small.n_valid
    assert (large.ct_shape, large.ct_spacing, large.n_xray) == (small.ct_shape, small.ct_spacing, small.n_xray)

    def keys(preset, split):
        return [(t.patient, t.scan, t.n_recon) for t in plan_scans(preset, 0, split, tmp_path / preset.name)]

    assert keys(large, "valid") == keys(small, "valid")
    head, full = keys(small, "train"), keys(large, "train")
    assert full[: len(head) - 1] == head[:-1] and full[len(head) - 1][:2] == head[-1][:2]  # the last one may be cut
    assert sum(k[2] for k in full) == large.n_train
    for preset in (small, large):
        write_scan(plan_scans(preset, 0, "train", tmp_path / preset.name)[1])
    name = next((tmp_path / "ablation").rglob("*.nii.gz")).relative_to(tmp_path / "ablation")
    assert (tmp_path / "ablation" / name).read_bytes() == (tmp_path / "headroom" / name).read_bytes()
