"""DICOM series: sorting by position, rescale, spacing from positions, rejections, privacy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctxray.cli import main
from ctxray.data.dicom import read_dicom_raw, scan_dicom_folder, series_id, write_ct_series
from ctxray.data.readers import VolumeReadError, load_volume

from .test_data_ctrate import phantom_hu

PATIENT = {"PatientName": "DOE^JANE", "PatientID": "PID4711", "PatientBirthDate": "19530412",
           "AccessionNumber": "ACC987654"}
SECRETS = ["DOE", "JANE", "PID4711", "19530412", "ACC987654"]
SPEC = {"name": "t", "spacing_zyx": [3.0, 1.5, 1.5], "shape_zyx": [8, 16, 16], "hu_min": -1000.0, "hu_max": 1000.0,
        "dtype": "float32", "fit": "crop_pad", "version": 1}


def test_shuffled_series_reads_back_array_spacing_orientation(tmp_path):
    hu = phantom_hu((10, 20, 24))
    files = write_ct_series(tmp_path / "s", hu, (2.5, 0.7, 0.8), intercept=-1024.0, slope=1.0, seed=3)
    names = sorted(p.name for p in files)
    inst = [int(pydicom.dcmread(tmp_path / "s" / n).InstanceNumber) for n in names]
    assert inst != sorted(inst) or names != [p.name for p in files]  # file order says nothing about position
    vol = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu, hu)  # slope/intercept applied, inferior slice first, RAS
    assert vol.spacing_zyx == pytest.approx((2.5, 0.7, 0.8))  # from positions, not SliceThickness (5.0)
    assert vol.affine[0, 0] > 0 and vol.affine[1, 1] > 0 and vol.affine[2, 2] > 0
    assert vol.source == series_id(str(pydicom.dcmread(files[0]).SeriesInstanceUID))


def test_slope_two_gives_same_hu(tmp_path):
    hu = phantom_hu((6, 12, 12)).astype(np.int32) // 2 * 2  # even values survive slope 2 exactly
    write_ct_series(tmp_path / "s", hu, (3.0, 1.0, 1.0), intercept=-2048.0, slope=2.0)
    np.testing.assert_array_equal(load_volume(tmp_path / "s").hu, hu)


def test_pydicom_ct_small_has_right_hu():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    vol = load_volume(path)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.hu.shape == (1, 128, 128)
    np.testing.assert_array_equal(vol.hu[0], expected[::-1, ::-1])  # LPS rows/cols -> RAS
    assert vol.spacing_zyx[1:] == pytest.approx((0.661468, 0.661468))
    assert -1100 < vol.hu.min() < -800 and vol.hu.max() > 1000  # air and bone where HU say


def _drop_middle_slice(folder: Path) -> None:
    by_z = sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_z[len(by_z) // 2].unlink()


def test_missing_slice_is_reported(tmp_path):
    write_ct_series(tmp_path / "s", phantom_hu((8, 12, 12)), (2.0, 1.0, 1.0))
    _drop_middle_slice(tmp_path / "s")
    with pytest.raises(VolumeReadError, match=r"missing slice: gap of 4\.00 mm .* spacing is 2\.00 mm"):
        load_volume(tmp_path / "s")


def test_rejections_and_privacy_in_a_batch(tmp_path, caplog):
    """Good + MR + missing slice + uneven spacing: one error line each; the localizer skipped; no PHI."""
    root = tmp_path / "DOE^JANE_PID4711"  # identifiers in the folder name must not leak either
    hu = phantom_hu((8, 16, 16))
    write_ct_series(root / "good", hu, (3.0, 1.5, 1.5), patient=PATIENT)
    write_ct_series(root / "gap", hu, (3.0, 1.5, 1.5), patient=PATIENT)
    _drop_middle_slice(root / "gap")
    for name, tag, value in (("scout", "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]), ("mr", "Modality", "MR")):
        for p in write_ct_series(root / name, hu, (3.0, 1.5, 1.5), patient=PATIENT):
            ds = pydicom.dcmread(p)
            setattr(ds, tag, value)
            ds.save_as(p)
    for p in write_ct_series(root / "uneven", hu, (3.0, 1.5, 1.5), patient=PATIENT):
        ds = pydicom.dcmread(p)
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z + 0.02 * z * z]
        ds.save_as(p)
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    out = tmp_path / "cache"
    caplog.set_level("DEBUG")
    args = [str(root), "--out", str(out), "--spec", str(tmp_path / "spec.json"), "--format", "dicom"]
    assert main(["preprocess", *args]) == 0
    assert main(["preprocess", *args, "--strict"]) == 1
    errors = (out / "errors.log").read_text().splitlines()
    assert len(errors) == 3
    reasons = " | ".join(errors)
    for expected in ("modality MR is not CT", "missing slice", "uneven slice spacing"):
        assert expected in reasons
    assert "localizer" not in reasons and "skipped: localizer (scout) series" in caplog.text  # not a failure
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 1 and entries[0]["id"].startswith("dcm-")
    good_uid = str(pydicom.dcmread(next((root / "good").iterdir())).SeriesInstanceUID)
    assert entries[0]["id"] == series_id(good_uid)
    cached = np.load(out / entries[0]["file"])
    from ctxray.data.spec import PreprocessSpec

    np.testing.assert_allclose(cached, PreprocessSpec.from_dict(SPEC).apply(hu, (3.0, 1.5, 1.5)), atol=1e-6)
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret} leaked into {path}"
    for secret in SECRETS:
        assert secret not in caplog.text
    assert len(scan_dicom_folder(root)) == 5


def test_several_series_need_a_choice(tmp_path):
    hu = phantom_hu((6, 10, 10))
    a = write_ct_series(tmp_path / "a", hu, (2.0, 1.0, 1.0))
    write_ct_series(tmp_path / "b", hu + 10, (2.0, 1.0, 1.0))
    with pytest.raises(VolumeReadError, match="2 series found"):
        load_volume(tmp_path)
    uid = str(pydicom.dcmread(a[0]).SeriesInstanceUID)
    np.testing.assert_array_equal(load_volume(tmp_path, series_uid=uid).hu, hu)


def test_redact_replaces_every_identifier_form():
    from ctxray.data.dicom import redact

    text = "/data/DOE^JANE/PID4711/DOE/scan"
    assert redact(text, {"DOE^JANE", "DOE", "JANE", "PID4711"}) == "/data/[redacted]/[redacted]/[redacted]/scan"
    assert redact("/data/ab/x", {"ab"}) == "/data/ab/x"  # too short to redact safely


def test_twelve_bit_pixels_go_through_pydicom_and_agree(tmp_path):
    hu = phantom_hu((5, 8, 8))
    for p in write_ct_series(tmp_path / "s", hu, (2.0, 1.0, 1.0)):
        ds = pydicom.dcmread(p)
        ds.BitsStored, ds.HighBit = 12, 11  # not the direct 16-bit path
        ds.save_as(p)
    np.testing.assert_array_equal(load_volume(tmp_path / "s").hu, hu)


def _as_pydicom_gives(value):
    from pydicom.multival import MultiValue

    if isinstance(value, list | MultiValue):
        return [_as_pydicom_gives(v) for v in value]
    return value if value is None or isinstance(value, int | float) else str(value)


def test_fast_header_equals_pydicom_on_every_file_it_accepts():
    # pydicom's own test files: explicit/implicit VR, sequences, big endian, compressed, odd charsets...
    import pydicom
    import pydicom.data

    from ctxray.data.dicom_header import TAGS, read_fast_header

    files = sorted(p for p in (Path(pydicom.data.__file__).parent / "test_files").rglob("*") if p.is_file())
    accepted = 0
    for path in files:
        head = read_fast_header(path)
        if head is None:  # not the plain case: the reader uses pydicom for it
            continue
        accepted += 1
        ds = pydicom.dcmread(str(path))
        for keyword, _ in TAGS.values():
            want = _as_pydicom_gives(ds.get(keyword))
            assert head.get(keyword) == (None if want == "" else want), (path.name, keyword)
        if "PixelData" in ds:
            raw = path.read_bytes()[head.pixel_offset:head.pixel_offset + head.pixel_length]
            assert raw == ds.PixelData, path.name
    assert accepted >= 20  # the plain case is common, not a corner


def test_fast_and_pydicom_headers_give_the_same_volume(tmp_path, monkeypatch):
    from ctxray.data import dicom

    hu = np.random.default_rng(5).integers(-1000, 1500, (6, 12, 10)).astype(np.float32)
    write_ct_series(tmp_path / "s", hu, (2.0, 0.8, 0.9), patient={"PatientName": "DOE^JANE", "PatientID": "P123"})
    fast = read_dicom_raw(tmp_path / "s")
    fast_series = scan_dicom_folder(tmp_path / "s")[0]
    assert all(s.raw is not None for s in fast_series.slices)
    monkeypatch.setattr(dicom, "read_fast_header", lambda path: None)
    slow_series = scan_dicom_folder(tmp_path / "s")[0]
    assert all(s.raw is None for s in slow_series.slices)
    assert slow_series.identifiers == fast_series.identifiers >= {"DOE", "JANE", "P123"}
    assert [s.path for s in slow_series.slices] == [s.path for s in fast_series.slices]
    slow = read_dicom_raw(tmp_path / "s")
    np.testing.assert_array_equal(fast.values, slow.values)
    assert fast.values.dtype == slow.values.dtype and fast.spacing_zyx == slow.spacing_zyx
    assert (fast.slope, fast.intercept) == (slow.slope, slow.intercept)
    np.testing.assert_array_equal(fast.affine, slow.affine)


def test_median_of_slice_gaps_equals_numpys():
    from ctxray.data.dicom import _median

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 4, 39, 40, 299):
        x = rng.normal(1.25, 0.3, n) * 10 ** rng.uniform(-3, 3)
        assert _median(x) == float(np.median(x))
    assert np.isnan(_median(np.array([1.0, np.nan, 2.0])))
