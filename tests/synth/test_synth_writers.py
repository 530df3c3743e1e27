"""The world's writers are byte-deterministic and their files read back as written."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
from PIL import Image

from ctxray.synth.writers import nifti_bytes, write_csv, write_nifti, write_png


def test_nifti_is_byte_identical_and_reads_back_in_xyz_with_its_affine(tmp_path):
    vol = np.random.default_rng(0).integers(-1000, 1500, (5, 6, 7)).astype(np.int16)  # (D, H, W)
    affine = np.diag([0.8, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-100.0, -90.0, 40.0]
    raw = nifti_bytes(vol, affine)
    assert raw == nifti_bytes(vol.copy(), affine.copy())
    assert raw[4:8] == b"\0\0\0\0"  # gzip header: no timestamp
    assert nifti_bytes(vol + 1, affine) != raw
    write_nifti(tmp_path / "a.nii.gz", vol, affine)
    assert (tmp_path / "a.nii.gz").read_bytes() == raw
    img = nib.load(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol.transpose(2, 1, 0))  # stored as [x, y, z]
    np.testing.assert_allclose(img.affine, affine)
    assert img.header.get_xyzt_units() == ("mm", "sec") and int(img.header["sform_code"]) == 1
    assert gzip.decompress(raw)[:4] == np.int32(348).tobytes()  # a NIfTI-1 header inside


def test_png_and_csv_round_trip_byte_for_byte(tmp_path):
    image = np.arange(48 * 64, dtype=np.int64).reshape(48, 64) % 256
    write_png(tmp_path / "a.png", image)
    write_png(tmp_path / "b.png", image.copy())
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    back = np.asarray(Image.open(tmp_path / "a.png"))
    assert back.dtype == np.uint8 and back.shape == (48, 64)
    np.testing.assert_array_equal(back, image)
    write_csv(tmp_path / "a.csv", ["id", "text", "n"], [["x1", "a, b", 1], ["x2", 'say "hi"', 2.5]])
    assert (tmp_path / "a.csv").read_bytes() == b'id,text,n\nx1,"a, b",1\nx2,"say ""hi""",2.5\n'
