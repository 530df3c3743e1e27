"""load_volume: one RAS (D, H, W) convention whatever the storage order; errors name the file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctxray.data.readers import VolumeReadError, load_volume, read_volume_raw

from .test_data_ctrate import phantom_hu


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))


def test_permuted_and_flipped_storage_reads_the_same(tmp_path):
    hu = phantom_hu((10, 14, 16))
    xyz = hu.transpose(2, 1, 0)  # RAS storage: i -> x (right), j -> y (anterior), k -> z (superior)
    _save(tmp_path / "ras.nii.gz", xyz, np.diag([0.8, 0.9, 2.0, 1.0]))
    # Stored as (z, x, y) with z running downward: same voxels, different header.
    perm = np.ascontiguousarray(xyz.transpose(2, 0, 1)[::-1])
    aff = np.zeros((4, 4))
    aff[2, 0], aff[0, 1], aff[1, 2], aff[3, 3] = -2.0, 0.8, 0.9, 1.0
    aff[2, 3] = (hu.shape[0] - 1) * 2.0
    _save(tmp_path / "perm.nii.gz", perm, aff)
    a, b = load_volume(tmp_path / "ras.nii.gz"), load_volume(tmp_path / "perm.nii.gz")
    np.testing.assert_array_equal(a.hu, hu)
    np.testing.assert_array_equal(b.hu, hu)
    assert a.spacing_zyx == b.spacing_zyx == pytest.approx((2.0, 0.9, 0.8))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    # Index 0 of D is inferior: the RAS affine's z grows with the array's first axis.
    assert a.affine[2, 2] > 0


def test_nifti_scaling_is_applied_once(tmp_path):
    hu = phantom_hu((6, 8, 8))
    img = nib.Nifti1Image((hu + 1024).astype(np.int16).transpose(2, 1, 0), np.eye(4))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    raw = read_volume_raw(tmp_path / "scaled.nii.gz")
    assert raw.values.dtype == np.int16 and (raw.slope, raw.intercept) == (1.0, -1024.0)
    np.testing.assert_array_equal(load_volume(tmp_path / "scaled.nii.gz").hu, hu)


def test_npz_ours_and_radchest(tmp_path):
    hu = phantom_hu((6, 8, 10))
    np.savez(tmp_path / "ours.npz", ct=hu, spacing_zyx=np.array([2.0, 1.0, 1.0]))
    np.savez(tmp_path / "rad.npz", ct=hu[::-1, ::-1, ::-1])
    ours, rad = load_volume(tmp_path / "ours.npz"), load_volume(tmp_path / "rad.npz")
    np.testing.assert_array_equal(ours.hu, hu)
    np.testing.assert_array_equal(rad.hu, hu)
    assert ours.spacing_zyx == (2.0, 1.0, 1.0) and rad.spacing_zyx == (0.8, 0.8, 0.8)
    np.savez(tmp_path / "other.npz", volume=hu)
    with pytest.raises(VolumeReadError, match=r"other\.npz: no array named 'ct'"):
        load_volume(tmp_path / "other.npz")


@pytest.mark.parametrize("name, content, reason", [
    ("absent.nii.gz", None, "file not found"),
    ("notes.txt", b"hello", "unknown volume format"),
    ("broken.npz", b"not a zip", "unreadable .npz"),
    ("broken.nii", b"\0" * 400, "unreadable NIfTI"),
])
def test_errors_name_the_file_and_the_reason(tmp_path, name, content, reason):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(VolumeReadError, match=rf"{name}: {reason}"):
        load_volume(tmp_path / name)


def test_canonical_zyx_equals_nibabels_reorientation_on_every_axis_order():
    import itertools

    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    from ctxray.data.volume import canonical_zyx

    data = np.arange(3 * 4 * 5).reshape(3, 4, 5)
    rng = np.random.default_rng(0)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((-1.0, 1.0), repeat=3):
            for tilt in (0.0, 0.02, 0.3):  # axis-aligned, ~1 degree (ours), ~17 degrees (nibabel decides)
                aff = np.zeros((4, 4))
                aff[3, 3] = 1.0
                for i, (p, sg) in enumerate(zip(perm, signs, strict=True)):
                    aff[p, i] = sg * rng.uniform(0.5, 3.0)
                aff[:3, :3] += tilt * rng.uniform(-1, 1, (3, 3)) * np.abs(aff[:3, :3]).max()
                aff[:3, 3] = rng.uniform(-200, 200, 3)
                ornt = io_orientation(aff)
                want = apply_orientation(data, ornt).transpose(2, 1, 0)
                got, got_aff = canonical_zyx(data, aff)
                np.testing.assert_array_equal(got, want)
                np.testing.assert_array_equal(got_aff, aff @ inv_ornt_aff(ornt, data.shape))


def test_the_dispatcher_hands_each_format_to_its_reader(tmp_path):
    from ctxray.data.nifti import read_nifti_raw, read_npz_raw
    from ctxray.data.radchest import read_radchest_raw
    from ctxray.data.volume import RawVolume

    hu = phantom_hu((6, 8, 10))
    _save(tmp_path / "a.nii.gz", hu.transpose(2, 1, 0), np.diag([0.8, 0.9, 2.0, 1.0]))
    np.savez(tmp_path / "ours.npz", ct=hu, spacing_zyx=np.array([2.0, 1.0, 1.0]))
    np.savez(tmp_path / "rad.npz", ct=hu[::-1, ::-1, ::-1])
    for path, reader in ((tmp_path / "a.nii.gz", read_nifti_raw), (tmp_path / "ours.npz", read_npz_raw),
                         (tmp_path / "rad.npz", read_radchest_raw)):
        got, want = read_volume_raw(path), reader(path)
        assert isinstance(got, RawVolume)
        np.testing.assert_array_equal(got.values, want.values)
        assert (got.spacing_zyx, got.source, got.slope, got.intercept) == (want.spacing_zyx, want.source,
                                                                            want.slope, want.intercept)
