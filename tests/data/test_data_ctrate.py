"""CT-RATE reader: v1/v2 layouts, HU decision from values, metadata spacing, clear errors."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctxray.data.ctrate import load_ct_volume, read_ctrate, values_are_hu
from ctxray.data.readers import VolumeReadError
from ctxray.labels import CT_RATE_LABELS


def phantom_hu(shape_zyx: tuple[int, int, int] = (12, 24, 28), seed: int = 0) -> np.ndarray:
    """A chest-like HU volume: air, a soft-tissue body, two lungs, a bony spot. Shape: (D, H, W) int16."""
    d, h, w = shape_zyx
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    cy, cx = (h - 1) / 2, (w - 1) / 2
    vol = np.full(shape_zyx, -1000.0)
    body = ((y - cy) / (0.45 * h)) ** 2 + ((x - cx) / (0.47 * w)) ** 2 <= 1
    vol[body] = 40
    for side in (-1, 1):
        lung = ((y - cy) / (0.3 * h)) ** 2 + ((x - cx - side * 0.22 * w) / (0.15 * w)) ** 2 <= 1
        vol[lung] = -850
    vol[(np.abs(y - (cy + 0.38 * h)) < 1.5) & (np.abs(x - cx) < 2)] = 700
    vol += np.random.default_rng(seed).normal(0, 10, shape_zyx) + z * 0.5  # z ramp makes orientation visible
    return np.rint(np.clip(vol, -1024, 3071)).astype(np.int16)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_ctrate_fixture(root: Path, release: str = "v2", names: tuple[str, ...] = ("valid_1_a_1", "valid_1_a_2",
                         "valid_2_a_1"), split: str = "valid") -> dict[str, np.ndarray]:
    """Write a CT-RATE-shaped mini dataset; returns the true HU volumes (D, H, W) by VolumeName.

    v1: stored values are HU + 1024 (raw), header spacing 1 mm (wrong), spacing and rescale only in the
    metadata. v2: stored HU with a correct affine; the metadata still lists the rescale (-1024).
    """
    ds = root / "dataset"
    folder = {"v1": split, "v2": f"{split}_fixed"}[release]
    csv_split = {"train": "train", "valid": "validation"}[split]
    truth = {}
    meta_rows, report_rows, label_rows = [], [], []
    for i, stem in enumerate(names):
        hu = phantom_hu(seed=i)
        truth[f"{stem}.nii.gz"] = hu
        s, pid, scan, _ = stem.split("_")
        path = ds / folder / f"{s}_{pid}" / f"{s}_{pid}_{scan}" / f"{stem}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        xyz = hu.transpose(2, 1, 0)
        if release == "v1":
            img = nib.Nifti1Image((xyz + 1024).astype(np.int16), np.eye(4))
        else:
            img = nib.Nifti1Image(xyz, np.diag([0.75, 0.75, 1.5, 1.0]))
        nib.save(img, str(path))
        meta_rows.append([f"{stem}.nii.gz", "[0.75, 0.75]", 1.5, 1, -1024, hu.shape[0]])
        report_rows.append([f"{stem}.nii.gz", "Not given.", "Non-contrast CT.", f"Finding {i}.  Heart normal.",
                            "Not given." if i == 0 else f"Impression {i}."])
        label_rows.append([f"{stem}.nii.gz"] + [int((i + j) % 3 == 0) for j in range(18)])
    _write_csv(ds / "metadata" / f"{csv_split}_metadata.csv",
               ["VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept", "NumberofSlices"], meta_rows)
    _write_csv(ds / "radiology_text_reports" / f"{csv_split}_reports.csv",
               ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"], report_rows)
    # Label columns deliberately in reverse order: the reader must map by name.
    rev = list(reversed(CT_RATE_LABELS))
    _write_csv(ds / "multi_abnormality_labels" / f"{split}_predicted_labels.csv", ["VolumeName", *rev],
               [[r[0], *reversed(r[1:])] for r in label_rows])
    return truth


@pytest.mark.parametrize("release", ["v1", "v2"])
def test_both_releases_read_back_hu_and_metadata_spacing(tmp_path, release):
    truth = write_ctrate_fixture(tmp_path, release)
    recs = read_ctrate(tmp_path, "validation")
    assert [r.volume_name for r in recs] == list(truth)
    assert {r.release for r in recs} == {release}
    for r in recs:
        hu, spacing = load_ct_volume(r)
        assert hu.dtype == np.float32
        np.testing.assert_array_equal(hu, truth[r.volume_name])
        assert spacing == pytest.approx((1.5, 0.75, 0.75))
    assert recs[0].scan_id == "valid_1_a" and recs[1].scan_id == "valid_1_a"


def test_report_and_labels_follow_labels_json_order(tmp_path):
    write_ctrate_fixture(tmp_path, "v2")
    recs = read_ctrate(tmp_path / "dataset", "valid")
    assert recs[0].report == "Finding 0. Heart normal."
    assert recs[1].report == "Finding 1. Heart normal. Impression 1."
    expected = np.array([int((1 + j) % 3 == 0) for j in range(18)], dtype=np.float32)
    np.testing.assert_array_equal(recs[1].labels, expected)


def test_raw_values_in_a_fixed_folder_are_still_rescaled_once(tmp_path):
    """Decide from the values, not the folder name: a raw volume mislabelled v2 still gets HU."""
    truth = write_ctrate_fixture(tmp_path, "v1")
    ds = tmp_path / "dataset"
    (ds / "valid").rename(ds / "valid_fixed")
    recs = read_ctrate(tmp_path, "valid")
    assert recs[0].release == "v2"
    hu, _ = load_ct_volume(recs[0])
    np.testing.assert_array_equal(hu, truth[recs[0].volume_name])


def test_values_are_hu_decision():
    hu = phantom_hu().astype(np.float32)
    assert values_are_hu(hu, 1.0, -1024.0)
    assert not values_are_hu(hu + 1024, 1.0, -1024.0)
    assert values_are_hu(hu + 1024, 1.0, 0.0)  # identity rescale: nothing to decide


def test_missing_column_names_file_and_column(tmp_path):
    write_ctrate_fixture(tmp_path, "v2")
    path = tmp_path / "dataset" / "radiology_text_reports" / "validation_reports.csv"
    text = path.read_text().replace("Impressions_EN", "Impression")
    path.write_text(text)
    with pytest.raises(ValueError, match=r"validation_reports\.csv: missing column\(s\) \['Impressions_EN'\]"):
        read_ctrate(tmp_path, "valid")


def test_missing_label_column_is_named(tmp_path):
    write_ctrate_fixture(tmp_path, "v2")
    path = tmp_path / "dataset" / "multi_abnormality_labels" / "valid_predicted_labels.csv"
    path.write_text(path.read_text().replace("Hiatal hernia", "Hernia"))
    with pytest.raises(ValueError, match=r"valid_predicted_labels\.csv: missing column\(s\) \['Hiatal hernia'\]"):
        read_ctrate(tmp_path, "valid")


def test_missing_volume_error_skip_keep(tmp_path):
    write_ctrate_fixture(tmp_path, "v2")
    gone = tmp_path / "dataset" / "valid_fixed" / "valid_2" / "valid_2_a" / "valid_2_a_1.nii.gz"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match="valid_2_a_1.nii.gz: volume file not found"):
        read_ctrate(tmp_path, "valid")
    assert len(read_ctrate(tmp_path, "valid", missing="skip")) == 2
    kept = read_ctrate(tmp_path, "valid", missing="keep")
    with pytest.raises(VolumeReadError, match="valid_2_a_1.nii.gz: volume file not found"):
        load_ct_volume(kept[2])


def test_v1_without_metadata_is_an_error(tmp_path):
    write_ctrate_fixture(tmp_path, "v1")
    (tmp_path / "dataset" / "metadata" / "validation_metadata.csv").unlink()
    with pytest.raises(FileNotFoundError, match="validation_metadata.csv: file not found"):
        read_ctrate(tmp_path, "valid")


def test_unreadable_nifti_names_the_file(tmp_path):
    write_ctrate_fixture(tmp_path, "v2")
    recs = read_ctrate(tmp_path, "valid")
    data = recs[0].path.read_bytes()
    recs[0].path.write_bytes(data[: len(data) // 2])  # truncated gzip
    with pytest.raises(VolumeReadError, match=r"valid_1_a_1\.nii\.gz: unreadable NIfTI"):
        load_ct_volume(recs[0])
    recs[1].path.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(VolumeReadError, match=r"valid_1_a_2\.nii\.gz: unreadable NIfTI"):
        load_ct_volume(recs[1])


def test_rows_missing_from_metadata_or_labels_fail_only_that_volume(tmp_path):
    write_ctrate_fixture(tmp_path, "v1")
    ds = tmp_path / "dataset"
    meta = ds / "metadata" / "validation_metadata.csv"
    meta.write_text("\n".join(line for line in meta.read_text().splitlines() if "valid_2_a_1" not in line) + "\n")
    labels = ds / "multi_abnormality_labels" / "valid_predicted_labels.csv"
    labels.write_text("\n".join(line for line in labels.read_text().splitlines() if "valid_1_a_2" not in line) + "\n")
    recs = {r.volume_name: r for r in read_ctrate(tmp_path, "valid")}
    assert recs["valid_1_a_2.nii.gz"].labels is None and recs["valid_1_a_1.nii.gz"].labels is not None
    with pytest.raises(VolumeReadError, match=r"valid_2_a_1\.nii\.gz: no metadata row"):
        load_ct_volume(recs["valid_2_a_1.nii.gz"])
    load_ct_volume(recs["valid_1_a_1.nii.gz"])
