"""How predict finds scans and names them: pseudonyms that never carry the input path."""

from __future__ import annotations

import numpy as np

from ctxray.inference.scans import discover_scans, open_scan, scrub


def test_pseudonyms_follow_the_content_not_the_path(tmp_path):
    patient = tmp_path / "DOE^JANE_12345"
    patient.mkdir()
    hu = np.full((4, 5, 6), -800.0, np.float32)
    np.savez(patient / "a.npz", ct=hu, spacing_zyx=np.array([2.0, 1.0, 1.0]))
    np.savez(tmp_path / "b.npz", ct=hu, spacing_zyx=np.array([2.0, 1.0, 1.0]))
    (patient / "notes.txt").write_text("not a scan")
    found = discover_scans([tmp_path])
    assert sorted(p.name for p in found) == ["a.npz", "b.npz"]
    name_a, read_a = open_scan(patient / "a.npz")
    name_b, _ = open_scan(tmp_path / "b.npz")
    assert name_a == name_b and name_a.startswith("scan-") and "DOE" not in name_a  # same bytes, same name
    assert read_a().values.shape == (4, 5, 6)
    missing, read_missing = open_scan(tmp_path / "gone.nii.gz")
    assert missing.startswith("scan-") and "gone" not in missing


def test_scrub(tmp_path):
    path = tmp_path / "DOE^JANE" / "scan.nii.gz"
    text = scrub(f"{path}: unreadable; also {tmp_path / 'DOE^JANE' / 'x.dcm'}", path)
    assert "DOE" not in text and "<input>" in text
