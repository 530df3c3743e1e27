"""`ctxray predict` on bad, wrong and identifying inputs (built in tmp dirs): an error entry with the reason,
a warning when the scan is not a chest, no NaN in JSON, no identifier in any output or log line."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

import ctxray
from ctxray.cli import main
from ctxray.data.dicom import series_id, write_ct_series
from ctxray.inference.predict import predict

from .infer_helpers import synthetic_ct, write_nifti

SPACING = (9.0, 8.0, 8.0)


def _strict_json(path: Path) -> dict:
    def refuse(name):
        raise AssertionError(f"{path}: bare {name} in JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return ctxray.load(tiny_model_dir)


def test_nan_and_constant_volumes_get_error_entries_and_strict_json(model, tmp_path):
    hu = synthetic_ct()
    nan = hu.copy()
    nan[5, 10, 10:17] = np.nan  # 7 NaN voxels
    import nibabel as nib

    nib.save(nib.Nifti1Image(nan.transpose(2, 1, 0), np.diag([8.0, 8.0, 9.0, 1.0])), str(tmp_path / "nan.nii.gz"))
    write_nifti(tmp_path / "zeros.nii.gz", np.zeros_like(hu), SPACING)
    write_nifti(tmp_path / "good.nii.gz", hu, SPACING)
    results = {Path(r.input).name: r for r in predict(model, [tmp_path], tmp_path / "out", explain="none", html=False)}
    assert results["good.nii.gz"].status == "ok"
    assert results["nan.nii.gz"].status == "error" and "7 NaN/inf voxel(s)" in results["nan.nii.gz"].error
    assert results["zeros.nii.gz"].status == "error" and "volume is constant" in results["zeros.nii.gz"].error
    summary = _strict_json(tmp_path / "out" / "summary.json")
    assert summary["n_ok"] == 1 and summary["n_error"] == 2
    assert not (tmp_path / "out" / results["nan.nii.gz"].name).exists()  # no findings written for it
    _strict_json(tmp_path / "out" / results["good.nii.gz"].name / "findings.json")


def _scout(folder: Path, hu: np.ndarray) -> None:
    """A localizer series written into ``folder`` beside the CT's files (as scanners export them)."""
    tmp = folder.parent / f".{folder.name}_scout"
    for p in write_ct_series(tmp, hu[:3], (20.0, 8.0, 8.0)):
        ds = pydicom.dcmread(p)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(folder / f"SC_{p.name}")
        p.unlink()
    tmp.rmdir()


def test_dicom_folder_with_scout_reads_the_ct_and_several_series_can_be_picked(model, tiny_model_dir, tmp_path):
    hu = np.clip(synthetic_ct(), -1024, None)
    folder = tmp_path / "study"
    write_ct_series(folder, hu, SPACING, series_uid="1.2.3.4.100")
    _scout(folder, hu)
    (res,) = predict(model, [folder], tmp_path / "one", explain="none", html=False)
    assert res.status == "ok"
    for p in write_ct_series(tmp_path / "second", hu + 5, SPACING, series_uid="1.2.3.4.200"):
        p.rename(folder / f"B_{p.name}")
    (res,) = predict(model, [folder], tmp_path / "two", explain="none", html=False)
    assert res.status == "error" and "2 series found (localizers skipped)" in res.error and "--series-uid" in res.error
    assert series_id("1.2.3.4.100") in res.error and series_id("1.2.3.4.200") in res.error
    for pick in ("1.2.3.4.200", series_id("1.2.3.4.200")):
        rc = main(["predict", "--model", str(tiny_model_dir), "--input", str(folder), "--out", str(tmp_path / pick),
                   "--series-uid", pick, "--explain", "none", "--no-html", "--strict"])
        assert rc == 0
    assert main(["predict", "--model", str(tiny_model_dir), "--input", str(folder), "--out", str(tmp_path / "x"),
                 "--explain", "none", "--no-html", "--strict"]) == 1


def test_a_folder_of_localizers_only_is_skipped_not_failed(tiny_model_dir, tmp_path):
    hu = np.clip(synthetic_ct(), -1024, None)
    study = tmp_path / "study"
    write_ct_series(study / "ct", hu, SPACING)
    (study / "scout").mkdir()
    _scout(study / "scout", hu)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(tiny_model_dir), "--input", str(study), "--out", str(out),
                 "--explain", "none", "--no-html", "--strict"]) == 0
    summary = _strict_json(out / "summary.json")
    assert (summary["n_ok"], summary["n_skipped"], summary["n_error"]) == (1, 1, 0)
    (skipped,) = [s for s in summary["scans"] if s["status"] == "skipped"]
    assert "only localizer (scout) series" in skipped["error"] and (out / "errors.log").read_text() == ""


def head_like(shape=(20, 40, 44), seed: int = 0) -> np.ndarray:
    """A head-like HU volume: a skull shell of bone around brain soft tissue, air outside, no lungs."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    r = (z / 0.95) ** 2 + (y / 0.9) ** 2 + (x / 0.8) ** 2
    hu = np.full(shape, -1000.0, np.float32)
    hu[r <= 1] = 800.0
    hu[r <= 0.8] = 35.0
    return (hu + rng.normal(0, 10, shape)).astype(np.float32)


def synth_chest() -> tuple[np.ndarray, tuple[float, float, float]]:
    """A chest from the project's synthetic world (one patient of the tiny preset, no lesions)."""
    from ctxray.synth.canvas import Grid
    from ctxray.synth.presets import get_preset
    from ctxray.synth.render import render_ct
    from ctxray.synth.scans import patient

    preset = get_preset("tiny")
    anatomy, _labels, _age = patient(0, 0, 0)
    return render_ct(anatomy, [], Grid.centred(preset.ct_shape, preset.ct_spacing), 0), preset.ct_spacing


def test_a_head_is_flagged_as_not_a_chest_in_every_output(model, tmp_path):
    write_nifti(tmp_path / "head.nii.gz", head_like(), (8.0, 5.0, 5.0))  # 160 mm long, 200 x 220 mm
    chest, spacing = synth_chest()
    write_nifti(tmp_path / "chest.nii.gz", chest, spacing)
    results = {Path(r.input).name: r for r in predict(model, [tmp_path], tmp_path / "out", explain="none")}
    head, ok = results["head.nii.gz"], results["chest.nii.gz"]
    assert head.status == ok.status == "ok"
    assert ok.warnings == []
    assert any("no lungs found" in w for w in head.warnings)
    out = tmp_path / "out"
    doc = _strict_json(out / head.name / "findings.json")
    assert doc["field_of_view"]["chest_like"] is False and doc["field_of_view"]["lung_fraction"] < 0.01
    assert doc["warnings"] == head.warnings
    assert _strict_json(out / ok.name / "findings.json")["field_of_view"]["chest_like"] is True
    summary = _strict_json(out / "summary.json")
    entry = next(s for s in summary["scans"] if s["scan"] == head.name)
    assert entry["warnings"] == head.warnings and summary["n_warning"] == 1
    assert "no lungs found" in (out / head.name / "report.html").read_text()
    assert "no lungs found" not in (out / ok.name / "report.html").read_text()
    assert (out / head.name / "report.txt").read_text().startswith("WARNING: no lungs found")


SECRETS = {"PatientName": "HIDDEN^PATIENT", "PatientID": "PID777123", "AccessionNumber": "ACC999888",
           "InstitutionName": "SAINT FAKEMOUNT HOSPITAL", "ReferringPhysicianName": "WHOOPSIE^DOCTOR",
           "PatientBirthDate": "19471103"}
NEEDLES = ["HIDDEN", "PID777123", "ACC999888", "FAKEMOUNT", "WHOOPSIE", "19471103"]


def _all_text(root: Path) -> dict[Path, bytes]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            out[p] = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return out


def test_no_identifier_reaches_any_output_or_log_line(tiny_model_dir, tmp_path, caplog):
    hu = np.clip(synthetic_ct(), -1024, None)
    root = tmp_path / "HIDDEN^PATIENT_PID777123"
    study = root / "ACC999888_WHOOPSIE^DOCTOR_SAINT FAKEMOUNT HOSPITAL_19471103"
    uid = "1.2.826.0.1.3680043.8.498.12345"
    write_ct_series(study, hu, SPACING, patient=SECRETS, series_uid=uid)
    _scout(study, hu)
    (root / "HIDDEN_broken.nii.gz").write_bytes(b"\x1f\x8b not gzip")
    out, mapping = tmp_path / "out", tmp_path / "private" / "mapping.tsv"
    mapping.parent.mkdir()
    caplog.set_level(logging.INFO)
    rc = main(["predict", "--model", str(tiny_model_dir), "--input", str(root), "--out", str(out), "--explain", "all",
               "--explain-unvalidated", "--write-mapping", str(mapping)])
    assert rc == 0
    files = _all_text(out)
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    expected = "scan-" + __import__("hashlib").sha256(uid.encode()).hexdigest()[:12]
    assert expected in names and all(re.fullmatch(r"scan-[0-9a-f]{12}", n) for n in names)
    assert len(files) > 10 and any(p.name == "report.html" for p in files)
    for needle in NEEDLES:
        for path, data in files.items():
            assert needle.encode() not in data, f"{needle} in {path}"
            assert needle not in str(path.relative_to(tmp_path / "out"))
        assert needle not in caplog.text, needle
    assert str(tmp_path).encode() not in b"".join(files.values())
    summary = _strict_json(out / "summary.json")
    assert summary["n_ok"] == 1 and summary["n_error"] == 1
    table = mapping.read_text().splitlines()
    assert table[0] == "scan\tinput" and any(line.startswith(expected + "\t") and "HIDDEN" in line for line in table)


def test_export_refuses_metrics_measured_on_another_checkpoint(tiny_metrics, tmp_path, caplog):
    import shutil

    from ctxray.evaluate.run import checkpoint_identity

    from .infer_helpers import make_run

    run = make_run(tmp_path / "a")
    other = make_run(tmp_path / "b", seed=1)
    shutil.copytree(other / "checkpoints" / "best", run / "checkpoints" / "last")
    metrics = json.loads(tiny_metrics.read_text())
    metrics["meta"] = checkpoint_identity(run)  # what `ctxray evaluate --checkpoint RUN` records: best
    (tmp_path / "E").mkdir()
    (tmp_path / "E" / "metrics.json").write_text(json.dumps(metrics))
    args = ["export", "--run", str(run), "--metrics", str(tmp_path / "E" / "metrics.json")]
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--checkpoint", "last", "--out", str(tmp_path / "m_last")]) == 2
    assert "were measured on" in caplog.text and str(run / "checkpoints" / "best") in caplog.text
    assert not (tmp_path / "m_last").exists()
    assert main([*args, "--checkpoint", "best", "--out", str(tmp_path / "m_best")]) == 0
    info = json.loads((tmp_path / "m_best" / "model.json").read_text())
    assert info["thresholds_measured_on"]["weights_sha256"] == metrics["meta"]["weights_sha256"]


def test_a_tokenizer_asking_for_remote_code_is_a_clean_error(tiny_model_dir, tmp_path, caplog):
    import shutil

    from ctxray.inference.folder import MANIFEST
    from ctxray.utils.io import sha256_file

    m = tmp_path / "model"
    shutil.copytree(tiny_model_dir, m)
    tc = m / "encoder" / "tokenizer" / "tokenizer_config.json"
    cfg = json.loads(tc.read_text())
    cfg["tokenizer_class"], cfg["auto_map"] = "CustomTokenizer", {"AutoTokenizer": ["custom.CustomTokenizer", None]}
    tc.write_text(json.dumps(cfg))
    (tc.parent / "custom.py").write_text("raise SystemExit('remote code ran')\n")
    manifest = json.loads((m / MANIFEST).read_text())
    manifest["files"]["encoder/tokenizer/tokenizer_config.json"] = sha256_file(tc)
    manifest["files"]["encoder/tokenizer/custom.py"] = sha256_file(tc.parent / "custom.py")  # listed, so it is read
    (m / MANIFEST).write_text(json.dumps(manifest))
    write_nifti(tmp_path / "ct.nii.gz", synthetic_ct(), SPACING)
    with caplog.at_level(logging.ERROR):
        rc = main(["predict", "--model", str(m), "--input", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "o")])
    assert rc == 2
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "cannot load a tokenizer" in record.getMessage() and "custom code" in record.getMessage()
    assert record.exc_info is None and "\n" not in record.getMessage()


def test_fov_check_flags_a_short_scan_and_a_small_field_of_view():
    from ctxray.inference.fov import chest_fov_check

    chest, spacing = synth_chest()
    assert chest_fov_check(chest, spacing).warnings == []
    short = chest_fov_check(chest, (2.0, spacing[1], spacing[2]))  # 32 slices of 2 mm: 64 mm long
    assert short.z_extent_mm == 64.0 and any("scan length 64 mm" in w for w in short.warnings)
    small = chest_fov_check(chest, (spacing[0], 2.0, 2.0))  # 128 mm across
    assert any("in-plane field of view 128 mm" in w for w in small.warnings) and not small.chest_like
