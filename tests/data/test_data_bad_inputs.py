"""A bad-input corpus for `ctxray preprocess`, built in tmp dirs: every case names the file and the reason,
and one bad row or volume never costs the rest of the batch."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctxray.cli import main
from ctxray.data.ingest import discover, safe_id
from ctxray.data.spec import PreprocessSpec

from .test_data_ctrate import phantom_hu

SPEC = PreprocessSpec("t", (3.0, 1.5, 1.5), (8, 16, 16), dtype="float32")
XYZ = phantom_hu((10, 14, 16)).transpose(2, 1, 0)


def _nifti(path: Path, data: np.ndarray = XYZ, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), str(path))


def _run(tmp_path: Path, root: Path, *extra: str) -> tuple[int, Path]:
    spec = tmp_path / "spec.json"
    SPEC.save(spec)
    out = tmp_path / "cache"
    return main(["preprocess", str(root), "--out", str(out), "--spec", str(spec), *extra]), out


def _ids(cache: Path) -> list[str]:
    return sorted(json.loads(line)["id"] for line in (cache / "manifest.jsonl").read_text().splitlines())


def _reports_csv(rows: list[list[str]], header=("VolumeName", "Findings_EN", "Impressions_EN", "Lung nodule")) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


ROWS = [["a.nii.gz", "Nodule.", "Not given.", "1"], ["b.nii.gz", "Normal.", "Not given.", "0"],
        ["c.nii.gz", "Clear.", "Not given.", "0"]]


def _three(root: Path) -> None:
    for name in ("a", "b", "c"):
        _nifti(root / f"{name}.nii.gz")


def test_one_latin1_row_is_read_and_warned_with_its_line(tmp_path, caplog):
    root = tmp_path / "in"
    _three(root)
    rows = [r[:] for r in ROWS]
    rows[1][1] = "Épanchement pleural modéré."
    text = _reports_csv(rows)
    lines = text.splitlines(keepends=True)
    data = b"".join(line.encode("cp1252" if i == 2 else "utf-8") for i, line in enumerate(lines))
    (root / "reports.csv").write_bytes(data)
    with caplog.at_level(logging.WARNING):
        rc, out = _run(tmp_path, root, "--reports", str(root / "reports.csv"), "--strict")
    assert rc == 0 and _ids(out) == ["a", "b", "c"]
    report = {json.loads(x)["id"]: json.loads(x)["report"] for x in (out / "manifest.jsonl").read_text().splitlines()}
    assert report["b"] == "Épanchement pleural modéré."
    assert any("reports.csv" in r.message and "line 3" in r.message and "cp1252" in r.message for r in caplog.records)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_utf16_and_bom_csv_are_detected(tmp_path, encoding):
    root = tmp_path / "in"
    _three(root)
    rows = [r[:] for r in ROWS]
    rows[0][1] = "Nodule médian, 6 mm."
    (root / "reports.csv").write_bytes(_reports_csv(rows).encode(encoding))
    rc, out = _run(tmp_path, root, "--reports", str(root / "reports.csv"), "--strict")
    assert rc == 0 and _ids(out) == ["a", "b", "c"]
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["report"] == "Nodule médian, 6 mm." and entry["labels"][CT_NODULE] == 1.0


CT_NODULE = __import__("ctxray.labels", fromlist=["CT_RATE_LABELS"]).CT_RATE_LABELS.index("Lung nodule")


def test_a_label_cell_reading_yes_skips_only_that_volume(tmp_path):
    root = tmp_path / "in"
    _three(root)
    rows = [r[:] for r in ROWS]
    rows[2][3] = "yes"
    rows[1][3] = "nan"  # pandas' unknown: read as unknown, not an error
    (root / "reports.csv").write_text(_reports_csv(rows))
    args = ("--reports", str(root / "reports.csv"))
    rc, out = _run(tmp_path, root, *args)
    assert rc == 0 and _ids(out) == ["a", "b"]
    entry_b = json.loads((out / "manifest.jsonl").read_text().splitlines()[1])
    assert entry_b["labels"][CT_NODULE] is None
    (line,) = (out / "errors.log").read_text().splitlines()
    assert "c.nii.gz" in line and "reports.csv, line 4" in line and "'Lung nodule' = 'yes' is not a number" in line
    assert _run(tmp_path, root, *args, "--strict")[0] == 1


def test_a_reports_csv_without_a_report_column_exits_2(tmp_path, caplog):
    root = tmp_path / "in"
    _three(root)
    (root / "reports.csv").write_text(_reports_csv([[r[0], r[3]] for r in ROWS], header=("VolumeName", "Lung nodule")))
    with caplog.at_level(logging.ERROR):
        rc, out = _run(tmp_path, root, "--reports", str(root / "reports.csv"))
    assert rc == 2 and not (out / "manifest.jsonl").exists()
    assert any("reports.csv: no report column" in r.message for r in caplog.records)


def test_non_ascii_names_keep_distinct_readable_ids(tmp_path):
    root = tmp_path / "in"
    for name in ("Müller", "Möller", "胸部", "腹部", "plain_1"):
        _nifti(root / f"{name}.nii.gz")
    rc, out = _run(tmp_path, root)
    ids = _ids(out)
    assert rc == 0 and len(ids) == 5
    assert "plain_1" in ids  # ASCII names keep their id
    assert {i.rsplit("-", 1)[0] for i in ids if i != "plain_1"} == {"Muller", "Moller", "volume"}
    assert safe_id("Müller") == safe_id("Mu\u0308ller")  # NFD (macOS) and NFC names give one id
    assert safe_id("case 01.x") == "case_01.x"
    assert len(discover(root).items) == 5


def _rot_z(deg: float) -> np.ndarray:
    t = np.radians(deg)
    a = np.eye(4)
    a[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return a @ np.diag([1.5, 1.5, 3.0, 1.0])


def _raw_header_nifti(path: Path, edit) -> None:
    """A NIfTI whose header fields are set after nibabel (which would refuse or fix them on save)."""
    img = nib.Nifti1Image(XYZ, np.diag([1.5, 1.5, 3.0, 1.0]))
    img.header["vox_offset"] = 352
    edit(img.header)
    path.write_bytes(img.header.binaryblock + b"\0" * 4 + np.asfortranarray(XYZ.astype(img.get_data_dtype())).tobytes())


def _sform(rows: np.ndarray):
    def edit(h):
        h["sform_code"], h["qform_code"] = 1, 0
        h["srow_x"], h["srow_y"], h["srow_z"] = rows[0], rows[1], rows[2]
    return edit


def _no_xform(h):
    h["sform_code"], h["qform_code"] = 0, 0
    h["pixdim"][1:4] = 0


def _negative_dim(h):
    h["dim"][2] = -14


BAD_VOLUMES = {  # file -> expected reason
    "zeros.nii.gz": "volume is constant (every voxel 0 HU)",
    "air.nii.gz": "volume is constant (every voxel -1000 HU)",
    "oblique45.nii.gz": "oblique voxel grid (45.0 degrees from the nearest axes",
    "no_xform.nii": "no voxel size: no sform/qform and pixdim (0.0, 0.0, 0.0)",
    "singular.nii": "singular affine",
    "nan_affine.nii": "affine (voxel-to-world matrix) has NaN/inf entries",
    "negative_dim.nii": "invalid NIfTI dimensions [16, -14, 10]",
    "empty.nii.gz": "empty file (0 bytes)",
    "huge_spacing.nii.gz": "implausible voxel spacing (3, 1.5, 100) mm",
}


def _bad_volume_folder(root: Path) -> None:
    _nifti(root / "good.nii.gz")
    _nifti(root / "tilted1.nii.gz", affine=_rot_z(1.0))  # tiny obliquity: accepted and logged
    nib.save(nib.Nifti2Image(XYZ, np.diag([1.5, 1.5, 3.0, 1.0])), str(root / "nifti2.nii"))  # NIfTI-2 is fine
    _nifti(root / "zeros.nii.gz", np.zeros_like(XYZ))
    _nifti(root / "air.nii.gz", np.full(XYZ.shape, -1000.0, np.float32))
    _nifti(root / "oblique45.nii.gz", affine=_rot_z(45.0))
    _raw_header_nifti(root / "no_xform.nii", _no_xform)
    _raw_header_nifti(root / "singular.nii", _sform(np.array([[1.5, 0, 0, 0], [3.0, 0, 0, 0], [0, 0, 3.0, 0]])))
    _raw_header_nifti(root / "nan_affine.nii", _sform(np.array([[np.nan, 0, 0, 0], [0, 1.5, 0, 0], [0, 0, 3, 0]])))
    _raw_header_nifti(root / "negative_dim.nii", _negative_dim)
    (root / "empty.nii.gz").write_bytes(b"")
    _nifti(root / "huge_spacing.nii.gz", affine=np.diag([100.0, 1.5, 3.0, 1.0]))


def test_each_bad_volume_is_rejected_with_its_reason(tmp_path, caplog):
    root = tmp_path / "in"
    _bad_volume_folder(root)
    with caplog.at_level(logging.INFO):
        rc, out = _run(tmp_path, root)
    assert rc == 0 and _ids(out) == ["good", "nifti2", "tilted1"]
    lines = (out / "errors.log").read_text().splitlines()
    assert len(lines) == len(BAD_VOLUMES), lines
    for name, reason in BAD_VOLUMES.items():
        assert sum(line.startswith(str(root / name)) and reason in line for line in lines) == 1, (name, lines)
    assert "np.float64" not in "".join(lines)
    assert any("tilted1.nii.gz" in r.getMessage() and "1.00 degrees oblique" in r.getMessage() for r in caplog.records)


def _scout(folder: Path) -> None:
    import pydicom

    from ctxray.data.dicom import write_ct_series

    for p in write_ct_series(folder, phantom_hu((4, 16, 16)), (3.0, 1.5, 1.5)):
        ds = pydicom.dcmread(p)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.save_as(p)


def test_a_ct_with_its_scout_is_not_a_failure_under_strict(tmp_path, caplog):
    from ctxray.data.dicom import write_ct_series

    root = tmp_path / "study"
    write_ct_series(root / "ct", phantom_hu((8, 16, 16)), (3.0, 1.5, 1.5))
    _scout(root / "scout")
    with caplog.at_level(logging.INFO):
        rc, out = _run(tmp_path, root, "--format", "dicom", "--strict")
    assert rc == 0 and len(_ids(out)) == 1
    assert (out / "errors.log").read_text() == ""
    assert "skipped: localizer (scout) series" in caplog.text


def test_a_truncated_dicom_slice_is_named(tmp_path):
    from ctxray.data.dicom import write_ct_series

    root = tmp_path / "study"
    files = write_ct_series(root / "ct", phantom_hu((8, 16, 16)), (3.0, 1.5, 1.5))
    cut = sorted(files)[3]
    cut.write_bytes(cut.read_bytes()[:-200])
    rc, out = _run(tmp_path, root, "--format", "dicom")
    (line,) = (out / "errors.log").read_text().splitlines()
    assert rc == 0 and str(cut) in line and "unreadable slice" in line, line


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text()
    except OSError:  # exited meanwhile
        return ""


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_kill_9_with_workers_leaves_no_worker_and_resume_cleans_temporaries(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "in"
    for i in range(24):
        _nifti(root / f"v{i:02d}.nii.gz", phantom_hu((10, 14, 16), seed=i).transpose(2, 1, 0))
    spec = tmp_path / "spec.json"
    PreprocessSpec("big", (0.5, 0.5, 0.5), (64, 96, 96), dtype="float32").save(spec)
    out = tmp_path / "cache"
    journal = out / "journal" / "all.jsonl"
    cmd = [sys.executable, "-m", "ctxray.cli", "preprocess", str(root), "--out", str(out), "--spec", str(spec),
           "--workers", "2"]
    env = {**os.environ, "CTXRAY_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        workers = [c for c in _children(proc.pid) if "spawn_main" in _cmdline(c)]
        if len(workers) >= 2 and journal.is_file() and journal.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL or len(workers) < 2:
        pytest.skip("the run finished before it could be killed with its workers running")
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "worker processes outlived the killed parent"
    lines = journal.read_text().splitlines()
    stale, foreign = out / "volumes" / ".v23.abcd_123.tmp.npy", out / "volumes" / ".x99.qwerty12.tmp.npy"
    stale.write_bytes(b"half a volume")
    foreign.write_bytes(b"another shard's volume")
    assert main(["preprocess", str(root), "--out", str(out), "--spec", str(spec), "--verify", "size"]) == 0
    assert not stale.exists() and foreign.exists()  # only this run's ids are cleaned
    assert len(_ids(out)) == 24 and len(lines) >= 2


def test_preprocess_redacts_physician_and_institution_names_from_folder_names(tmp_path, caplog):
    import pydicom

    from ctxray.data.dicom import write_ct_series

    tags = {"PatientName": "HIDDEN^PATIENT", "ReferringPhysicianName": "WHOOPSIE^DOCTOR",
            "InstitutionName": "FAKEMOUNT CLINIC"}
    root = tmp_path / "WHOOPSIE_FAKEMOUNT"
    files = write_ct_series(root / "bad", phantom_hu((8, 16, 16)), (3.0, 1.5, 1.5), patient=tags)
    by_z = sorted(files, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    by_z[4].unlink()  # a missing slice: an error line that quotes the folder
    write_ct_series(root / "good", phantom_hu((8, 16, 16)), (3.0, 1.5, 1.5), patient=tags)
    with caplog.at_level(logging.INFO):
        rc, out = _run(tmp_path, root, "--format", "dicom")
    assert rc == 0 and len(_ids(out)) == 1
    text = "".join(p.read_text() for p in (out / "errors.log", out / "manifest.jsonl")) + caplog.text
    assert "missing slice" in text and "[redacted]" in text
    for needle in ("WHOOPSIE", "FAKEMOUNT", "HIDDEN"):
        assert needle not in text, needle


def test_ctrate_bad_label_cell_and_bad_metadata_row_cost_only_their_volume(tmp_path, caplog):
    from .test_data_ctrate import write_ctrate_fixture

    write_ctrate_fixture(tmp_path / "ct", "v1")
    ds = tmp_path / "ct" / "dataset"
    labels = ds / "multi_abnormality_labels" / "valid_predicted_labels.csv"
    rows = list(csv.reader(labels.open()))
    col = rows[0].index("Lung nodule")
    rows[2][col] = "yes"  # valid_1_a_2
    with labels.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    meta = ds / "metadata" / "validation_metadata.csv"
    rows = list(csv.reader(meta.open()))
    rows[3][2] = "1,5 mm"  # valid_2_a_1's ZSpacing
    with meta.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with caplog.at_level(logging.WARNING):
        rc, out = _run(tmp_path, tmp_path / "ct")
    assert rc == 0 and _ids(out) == ["valid_1_a_1", "valid_1_a_2"]
    entry = json.loads((out / "manifest.jsonl").read_text().splitlines()[1])
    assert entry["labels"][CT_NODULE] is None and sum(v is not None for v in entry["labels"]) == 17
    assert "valid_2_a_1.nii.gz: no metadata row" in (out / "errors.log").read_text()
    assert "valid_predicted_labels.csv, line 3 (valid_1_a_2.nii.gz): label 'Lung nodule' = 'yes'" in caplog.text
    assert "line 4 of" in caplog.text and "cannot read ZSpacing='1,5 mm'" in caplog.text
