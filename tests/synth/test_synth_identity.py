"""Byte identity of the synthetic world against digests recorded from the code before issue 18's speed-ups.

The renderers were made faster without changing a byte of output; these digests (first 16 hex digits of
SHA-256, recorded from commit efca5a2, re-recorded for the descending aorta and lesion changes of the headroom
branch) catch any change of a float operation whose result is written.
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
    "ct/train_1/train_1_a/train_1_a_1.nii.gz": "3bccf47bc0f7ed61",
    "ct/train_1/train_1_a/train_1_a_2.nii.gz": "ea4c046778a04d71",
    "ct/train_2/train_2_a/train_2_a_1.nii.gz": "5254df6f580bda23",
    "ct/train_2/train_2_b/train_2_b_1.nii.gz": "17d237be1498b592",
    "xray/images/x000011.png": "57dc7a24f09fb9be",
    "xray/images/x000012.png": "766e4a9471d03abc",
    "xray/images/x000013.png": "29c5d8f5d5bc06c7",
    "xray/images/x000014.png": "66713c8c690217a2",
    "xray/images/x000015.png": "1320c89e4fc0e5b0",
    "xray/images/x000016.png": "fa2c459d649521d6",
    "<rows>": "5bdaf2a22bf31af0",
}
DEMO = {  # seed 5: valid scan 1, radiographs 200-202 (the demo's grids: 64x128x128 CT, 128 px X-ray)
    "ct/valid_2/valid_2_a/valid_2_a_1.nii.gz": "bd9a9ad8a417f2a4",
    "xray/images/x000201.png": "e1bb053cf0496352",
    "xray/images/x000202.png": "3eca512a4e32d287",
    "xray/images/x000203.png": "902d7e007bcfbe2e",
    "<rows>": "d967474dc18e1632",
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
