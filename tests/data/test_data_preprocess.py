"""`ctxray preprocess`: CT-RATE v1/v2, RAD-ChestCT, NIfTI + CSV, bad inputs, resume, shards, workers."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctxray.cli import main
from ctxray.data.spec import PreprocessSpec
from ctxray.labels import CT_RATE_LABELS

from .test_data_ctrate import phantom_hu, write_ctrate_fixture

SPEC = PreprocessSpec("t", (3.0, 1.5, 1.5), (8, 16, 16), dtype="float32")


def _spec_file(tmp_path: Path, spec: PreprocessSpec = SPEC) -> str:
    path = tmp_path / "spec.json"
    spec.save(path)
    return str(path)


def _manifest(cache: Path) -> list[dict]:
    return [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]


def _cache_state(cache: Path) -> dict[str, bytes]:
    """Everything a user sees in a finished cache; a killed write may leave only a hidden temporary."""
    paths = list((cache / "volumes").iterdir())
    assert all(".tmp" in p.name for p in paths if p.name.startswith("."))
    files = {p.relative_to(cache).as_posix(): p.read_bytes() for p in paths if not p.name.startswith(".")}
    files["manifest.jsonl"] = (cache / "manifest.jsonl").read_bytes()
    return files


def test_ctrate_v1_and_v2_give_the_same_cache(tmp_path):
    """HU handled once: a v1 (raw + metadata rescale) and a v2 (HU) copy of one dataset cache identically."""
    truth = write_ctrate_fixture(tmp_path / "v1", "v1")
    write_ctrate_fixture(tmp_path / "v2", "v2")
    spec = _spec_file(tmp_path)
    for rel in ("v1", "v2"):
        assert main(["preprocess", str(tmp_path / rel), "--out", str(tmp_path / f"c{rel}"), "--spec", spec]) == 0
    m1, m2 = _manifest(tmp_path / "cv1"), _manifest(tmp_path / "cv2")
    assert [e["id"] for e in m1] == [e["id"] for e in m2]
    for a, b in zip(m1, m2):  # equal up to float rounding (a second rescale would shift by 1024 HU = 0.512)
        np.testing.assert_allclose(np.load(tmp_path / "cv1" / a["file"]), np.load(tmp_path / "cv2" / b["file"]),
                                   atol=1e-5)
    assert m1[0]["rescale"] == [1.0, -1024.0] and m2[0]["rescale"] == [1.0, 0.0]
    e = m1[0]
    assert e["id"] == "valid_1_a_1" and e["scan_id"] == "valid_1_a" and e["split"] == "valid"
    assert e["report"] == "Finding 0. Heart normal." and len(e["labels"]) == 18
    assert (e["findings"], e["impression"]) == ("Finding 0. Heart normal.", "")
    assert e["shape"] == [8, 16, 16] and e["orig_spacing"] == [1.5, 0.75, 0.75] and e["preset"] == "t"
    arr = np.load(tmp_path / "cv1" / e["file"], mmap_mode="r")
    np.testing.assert_allclose(arr, SPEC.apply(truth["valid_1_a_1.nii.gz"], (1.5, 0.75, 0.75)), atol=1e-6)
    assert (tmp_path / "cv1" / "errors.log").read_text() == ""


def _write_radchest(root: Path) -> dict[str, np.ndarray]:
    """Two RAD-ChestCT volumes stored (S->I, A->P, R->L), a summary listing a third absent one, labels."""
    root.mkdir(parents=True)
    truth = {}
    for i, note in enumerate(["trn00001", "tst00002"]):
        hu = phantom_hu((10, 14, 16), seed=i)
        truth[note] = hu
        np.savez_compressed(root / f"{note}.npz", ct=hu[::-1, ::-1, ::-1])
    with open(root / "Summary_3630.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["NoteAcc_DEID", "Set_Assigned"])
        w.writerows([["trn00001", "train"], ["tst00002", "test"], ["trn00003", "train"]])
    cols = ["nodule*left_lung", "nodule*right_lung", "calcification*heart", "cardiomegaly*heart", "emphysema*lung"]
    mapped = ["pericardial_effusion", "hernia", "lymphadenopathy", "atelectasis", "opacity", "fibrosis",
              "pleural_effusion", "bronchial_wall_thickening", "consolidation", "bronchiectasis", "septal_thickening"]
    with open(root / "imgtrain_Abnormality_and_Location_Labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["NoteAcc_DEID", *cols, *(f"{m}*lung" for m in mapped)])
        w.writerow(["trn00001", 0, 1, 1, 0, 0, *([0] * len(mapped))])
        w.writerow(["tst00002", 0, 0, 0, 1, 0, *([0] * len(mapped))])
    return truth


def test_radchest_npz_round_trip_and_labels(tmp_path):
    truth = _write_radchest(tmp_path / "rad")
    out = tmp_path / "cache"
    assert main(["preprocess", str(tmp_path / "rad"), "--out", str(out), "--spec", _spec_file(tmp_path)]) == 0
    entries = {e["id"]: e for e in _manifest(out)}
    assert sorted(entries) == ["trn00001", "tst00002"]
    assert entries["trn00001"]["split"] == "train" and entries["tst00002"]["split"] == "test"
    for note, hu in truth.items():
        cached = np.load(out / entries[note]["file"])
        np.testing.assert_allclose(cached, SPEC.apply(hu, (0.8, 0.8, 0.8)), atol=1e-6)  # flipped back to RAS
    labels = dict(zip(CT_RATE_LABELS, entries["trn00001"]["labels"]))
    assert labels["Lung nodule"] == 1.0 and labels["Arterial wall calcification"] == 1.0
    assert labels["Cardiomegaly"] == 0.0 and labels["Medical material"] is None
    assert entries["trn00001"]["radchest_positive"] == ["calcification", "nodule"]
    assert "trn00003.npz: volume file not found" in (out / "errors.log").read_text()


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), str(path))


def test_lps_and_ras_nifti_preprocess_to_the_same_array(tmp_path):
    hu = phantom_hu((10, 14, 16))
    xyz = hu.transpose(2, 1, 0)
    _nifti(tmp_path / "in" / "ras.nii.gz", xyz)
    lps = np.diag([-1.5, -1.5, 3.0, 1.0])
    lps[:3, 3] = [15 * 1.5, 13 * 1.5, 0.0]
    _nifti(tmp_path / "in" / "lps.nii.gz", np.ascontiguousarray(xyz[::-1, ::-1]), lps)
    out = tmp_path / "cache"
    assert main(["preprocess", str(tmp_path / "in"), "--out", str(out), "--spec", _spec_file(tmp_path)]) == 0
    entries = {e["id"]: e for e in _manifest(out)}
    a, b = (np.load(out / entries[k]["file"]) for k in ("ras", "lps"))
    np.testing.assert_array_equal(a, b)
    assert entries["ras"]["sha256"] == entries["lps"]["sha256"]


def _bad_input_folder(root: Path) -> None:
    hu = phantom_hu((10, 14, 16))
    xyz = hu.transpose(2, 1, 0)
    for name in ("good1", "good2", "empty_report"):
        _nifti(root / f"{name}.nii.gz", xyz)
    data = (root / "good1.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zeroed bytes inside the deflate stream
    (root / "corrupt.nii.gz").write_bytes(bytes(corrupt))
    nan = xyz.astype(np.float32)
    nan[3, 3, 3] = np.nan
    _nifti(root / "nan.nii.gz", nan)
    _nifti(root / "flat.nii.gz", xyz[:, :, :1])
    _nifti(root / "four_d.nii.gz", np.stack([xyz, xyz], axis=-1))
    rows = [[n, "Some finding." if n != "empty_report" else "Not given.", "Not given."] for n in
            ("good1", "good2", "empty_report", "truncated", "corrupt", "nan", "flat", "four_d", "absent")]
    with open(root / "reports.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["VolumeName", "Findings_EN", "Impressions_EN"])
        w.writerows([[f"{r[0]}.nii.gz", *r[1:]] for r in rows])


EXPECTED_ERRORS = {
    "truncated.nii.gz": "unreadable NIfTI",
    "corrupt.nii.gz": "unreadable NIfTI (corrupt or truncated gzip",
    "nan.nii.gz": "1 NaN/inf voxel(s)",
    "flat.nii.gz": "expected a 3D volume, got a flat array",
    "four_d.nii.gz": "expected a 3D volume, got a 4D array",
    "empty_report.nii.gz": "empty report",
    "absent.nii.gz": "volume file not found",
}


def test_each_bad_input_gets_one_error_line_and_the_batch_completes(tmp_path):
    root = tmp_path / "in"
    _bad_input_folder(root)
    out = tmp_path / "cache"
    args = ["preprocess", str(root), "--reports", str(root / "reports.csv"), "--out", str(out),
            "--spec", _spec_file(tmp_path)]
    assert main(args) == 0
    assert sorted(e["id"] for e in _manifest(out)) == ["good1", "good2"]
    lines = (out / "errors.log").read_text().splitlines()
    assert len(lines) == len(EXPECTED_ERRORS)
    for name, reason in EXPECTED_ERRORS.items():
        assert sum(name in line and reason in line for line in lines) == 1, (name, lines)
    assert main([*args, "--strict"]) == 1


def _start_and_kill(cmd: list[str], journal: Path, after: int) -> int:
    """Run ``cmd``, SIGKILL it once ``journal`` has ``after`` lines; returns the lines done (-1: it finished first)."""
    env = {**os.environ, "CTXRAY_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= after:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        return -1
    return len(journal.read_text().splitlines())


def test_kill_midway_then_resume_equals_a_clean_run(tmp_path):
    root = tmp_path / "in"
    n = 30
    for i in range(n):
        _nifti(root / f"v{i:02d}.nii.gz", phantom_hu((10, 14, 16), seed=i).transpose(2, 1, 0))
    spec = _spec_file(tmp_path, PreprocessSpec("big", (0.5, 0.5, 0.5), (64, 96, 96), dtype="float32"))
    clean = tmp_path / "clean"
    for attempt in range(3):  # a fast machine may finish before the kill lands: try again
        killed = tmp_path / f"killed{attempt}"
        cmd = [sys.executable, "-m", "ctxray.cli", "preprocess", str(root), "--out", str(killed), "--spec", spec]
        done_before = _start_and_kill(cmd, killed / "journal" / "all.jsonl", after=2)
        if 2 <= done_before < n:
            break
    else:
        pytest.fail("could not kill the run midway in 3 attempts")
    assert not (killed / "manifest.jsonl").exists()
    assert main(["preprocess", str(root), "--out", str(killed), "--spec", spec]) == 0
    assert main(["preprocess", str(root), "--out", str(clean), "--spec", spec]) == 0
    assert _cache_state(killed) == _cache_state(clean)
    # A corrupted cached file is caught by its checksum and redone; the others are reused.
    victim = killed / "volumes" / "v05.npy"
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.write_bytes(bytes(data))
    from ctxray.data.cache import build_cache
    from ctxray.data.ingest import discover

    run = build_cache(discover(root).items, killed, PreprocessSpec.load(spec))
    assert (run.written, run.reused) == (1, n - 1)
    assert _cache_state(killed) == _cache_state(clean)


def test_shards_with_two_workers_merge_into_the_unsharded_cache(tmp_path):
    root = tmp_path / "in"
    for i in range(6):
        _nifti(root / f"v{i}.nii.gz", phantom_hu((10, 14, 16), seed=i).transpose(2, 1, 0))
    spec = _spec_file(tmp_path)
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert main(["preprocess", str(root), "--out", str(whole), "--spec", spec]) == 0
    assert main(["preprocess", str(root), "--out", str(sharded), "--spec", spec, "--shard", "1/2"]) == 0
    assert main(["preprocess", "--merge", "--out", str(sharded), "--strict"]) == 1  # shard 2/2 missing
    assert main(["preprocess", str(root), "--out", str(sharded), "--spec", spec, "--shard", "2/2",
                 "--workers", "2"]) == 0
    per_shard = [len(_manifest_file(sharded / "manifests" / f"shard-{k}-of-2.jsonl")) for k in (1, 2)]
    assert sum(per_shard) == 6 and min(per_shard) > 0
    assert main(["preprocess", "--merge", "--out", str(sharded), "--strict"]) == 0
    assert _cache_state(sharded) == _cache_state(whole)


def _manifest_file(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_other_spec_in_the_same_cache_is_refused(tmp_path):
    root = tmp_path / "in"
    _nifti(root / "a.nii.gz", phantom_hu((10, 14, 16)).transpose(2, 1, 0))
    out = str(tmp_path / "cache")
    assert main(["preprocess", str(root), "--out", out, "--spec", _spec_file(tmp_path)]) == 0
    assert main(["preprocess", str(root), "--out", out, "--preset", "tiny"]) == 2


@pytest.mark.parametrize("bad", ["0/2", "3/2", "x"])
def test_bad_shard_argument_is_rejected(tmp_path, bad):
    with pytest.raises(SystemExit):
        main(["preprocess", str(tmp_path), "--out", str(tmp_path / "c"), "--shard", bad])


def test_streamed_npy_equals_write_npy_and_a_failed_check_leaves_no_file(tmp_path):
    from ctxray.data.cache import write_npy, write_npy_slices

    arr = np.random.default_rng(1).random((5, 7, 3)).astype(np.float16)
    want = write_npy(tmp_path / "a.npy", arr)
    got = write_npy_slices(tmp_path / "b.npy", arr.shape, arr.dtype, iter(arr), lambda: None)
    assert got == want and (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), arr)

    def refuse() -> None:
        raise ValueError("constant volume")

    with pytest.raises(ValueError, match="constant volume"):
        write_npy_slices(tmp_path / "c.npy", arr.shape, arr.dtype, iter(arr), refuse)
    with pytest.raises(ValueError, match="4 slices written, expected 5"):
        write_npy_slices(tmp_path / "d.npy", arr.shape, arr.dtype, iter(arr[:4]), lambda: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "b.npy"]  # no file, no temporary left
