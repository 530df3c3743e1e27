"""The CT-RATE reader and `ctxray preprocess` round-trip the synthetic tiny world."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from ctxray.data.ctrate import load_ct_volume, read_ctrate
from ctxray.data.dataset import CTCacheDataset
from ctxray.labels import CT_RATE_LABELS

# Large dense findings in one lung field (nodules are too small for the tiny world's 5.4x5.4x10 mm voxels).
DENSE_IN_LUNG = {"Consolidation", "Pleural effusion"}


@pytest.fixture(scope="module")
def records(tiny_world):
    return {split: read_ctrate(tiny_world / "ct-rate", split) for split in ("train", "valid")}


@pytest.fixture(scope="module")
def truth(tiny_world):
    lines = (tiny_world / "ct-rate" / "ground_truth.jsonl").read_text().splitlines()
    return {(g := json.loads(line))["VolumeName"]: g for line in lines}


def test_reader_lists_every_volume_with_its_labels_and_spacing(tiny_world, records, truth):
    world = json.loads((tiny_world / "world.json").read_text())
    assert len(records["train"]) == world["counts"]["ct_train"] and len(records["valid"]) == world["counts"]["ct_valid"]
    for rec in records["train"] + records["valid"]:
        assert rec.release == "v2" and rec.path.is_file() and rec.report
        assert rec.spacing_zyx == pytest.approx(tuple(world["ct_spacing_zyx"]))
        gt = truth[rec.volume_name]
        np.testing.assert_array_equal(rec.labels, [gt["labels"][n] for n in CT_RATE_LABELS])
        assert rec.scan_id == gt["scan_id"]


def test_volumes_are_hu_in_the_canonical_ras_array(records):
    for rec in records["valid"][:4]:
        hu, spacing = load_ct_volume(rec)
        canonical = np.asarray(nib.as_closest_canonical(nib.load(rec.path)).dataobj).transpose(2, 1, 0)
        np.testing.assert_array_equal(hu, canonical)  # the metadata's -1024 intercept was not applied again
        assert hu.min() >= -1100 and np.mean(hu < -900) > 0.2  # air outside the body and in the lungs


def test_ground_truth_lesions_sit_where_the_volume_shows_them(records, truth):
    """Large dense lesions are dense at their recorded voxel, on the side their laterality names.

    W grows toward the patient's right in the RAS array, so a right-sided lesion has x above the middle.
    """
    checked = dense = 0
    for rec in records["train"] + records["valid"]:
        hu, _ = load_ct_volume(rec)
        for lesion in truth[rec.volume_name]["lesions"]:
            z, y, x = (int(round(c)) for c in lesion["center_zyx_vox"])
            side = {"right": 1, "left": -1}.get(lesion["laterality"])
            if side is not None:
                assert side * (lesion["center_zyx_vox"][2] - (hu.shape[2] - 1) / 2) > 0, (rec.volume_name, lesion)
            if lesion["label"] in DENSE_IN_LUNG:
                checked += 1
                dense += hu[z, y, x] > -300
    assert checked >= 5 and dense / checked >= 0.9, (dense, checked)


def test_preprocess_caches_the_whole_world(tiny_world, tmp_path, truth):
    from ctxray.cli import main

    out = tmp_path / "cache"
    assert main(["preprocess", str(tiny_world / "ct-rate"), "--out", str(out), "--preset", "tiny", "--strict"]) == 0
    assert (out / "errors.log").read_text() == ""
    ds = CTCacheDataset(out, split="valid")
    assert len(ds) == sum(1 for g in truth.values() if g["split"] == "valid")
    item = ds[0]
    assert item["volume"].shape == (1, 16, 32, 32)
    gt = truth[item["id"] + ".nii.gz"]
    np.testing.assert_array_equal(item["labels"].numpy(), [gt["labels"][n] for n in CT_RATE_LABELS])
    body = item["volume"][0, 8].numpy()  # a mid slice: air around a body, nothing cropped away at the edges
    assert body[0, 0] < 0.05 and body.max() > 0.5 and (body[:, 0] < 0.05).all() and (body[:, -1] < 0.05).all()
