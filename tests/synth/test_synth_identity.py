"""Byte identity of the synthetic world against digests recorded from the code before issue 18's speed-ups.

The renderers were made faster without changing a byte of output; these digests (first 16 hex digits of
SHA-256, recorded from commit efca5a2) catch any change of a float operation whose result is written.
A deliberate change of the world's look must record them anew (bench/synth_identity.py prints digests).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from ctxray.synth.presets import get_preset
from ctxray.synth.scans import plan_scans, write_scan
from ctxray.synth.xray_gallery import write_xray_chunk

TINY = {  # seed 3: train scans 0-2 (patient 1 has two reconstructions), radiographs 10-15
    "ct/train_1/train_1_a/train_1_a_1.nii.gz": "2e5ef0cff8d88c01",
    "ct/train_1/train_1_a/train_1_a_2.nii.gz": "8b3f94ae85943855",
    "ct/train_2/train_2_a/train_2_a_1.nii.gz": "b2885bf9aab862b7",
    "ct/train_2/train_2_b/train_2_b_1.nii.gz": "e30b36b64e89ce25",
    "xray/images/x000011.png": "2907b14b0a528eac",
    "xray/images/x000012.png": "02ed0e72be7a98db",
    "xray/images/x000013.png": "9b4a86bec5a159ad",
    "xray/images/x000014.png": "3d63c6bf07fffeb4",
    "xray/images/x000015.png": "406a2183268c899e",
    "xray/images/x000016.png": "de81997128b5cf99",
    "<rows>": "9e9dc733058cc578",
}
DEMO = {  # seed 5: valid scan 1, radiographs 200-202 (the demo's grids: 64x128x128 CT, 128 px X-ray)
    "ct/valid_2/valid_2_a/valid_2_a_1.nii.gz": "f2f821841ff5274c",
    "xray/images/x000201.png": "f97483eab0438a29",
    "xray/images/x000202.png": "f4a4b3c2270e3c29",
    "xray/images/x000203.png": "4de6af558710f36c",
    "<rows>": "57087dc7c1d10c16",
}


def _render(out: Path, preset: str, seed: int, split: str, scans: slice, xrays: tuple[int, int]) -> dict[str, str]:
    p = get_preset(preset)
    rows: list[object] = [write_scan(task) for task in plan_scans(p, seed, split, out / "ct")[scans]]
    rows.append(write_xray_chunk((out / "xray", p, seed, *xrays)))
    found = {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest()[:16]
             for f in sorted(out.rglob("*")) if f.is_file()}
    found["<rows>"] = hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()[:16]
    return found


@pytest.mark.parametrize(("preset", "seed", "split", "scans", "xrays", "want"), [
    ("tiny", 3, "train", slice(0, 3), (10, 16), TINY),
    ("demo", 5, "valid", slice(1, 2), (200, 203), DEMO),
])
def test_world_bytes_unchanged(tmp_path: Path, preset: str, seed: int, split: str, scans: slice,
                               xrays: tuple[int, int], want: dict[str, str]) -> None:
    assert _render(tmp_path, preset, seed, split, scans, xrays) == want
