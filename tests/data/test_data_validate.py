"""The checks every reader and preprocess apply: the grid, the spacing, the voxel values (errors name the file)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctxray.data.validate import MAX_OBLIQUE_DEG, check_affine, check_spacing, check_values, oblique_degrees
from ctxray.data.volume import VolumeReadError


def _rotated(deg: float) -> np.ndarray:
    a, c, s = np.eye(4), math.cos(math.radians(deg)), math.sin(math.radians(deg))
    a[:2, :2] = [[c, -s], [s, c]]
    return a


def test_oblique_grids_are_refused_beyond_the_limit_and_read_below_it():
    assert oblique_degrees(_rotated(2.0)) == pytest.approx(2.0)
    check_affine(_rotated(MAX_OBLIQUE_DEG - 0.5), "a.nii")
    with pytest.raises(VolumeReadError, match=r"b\.nii: oblique voxel grid \(10\.0 degrees"):
        check_affine(_rotated(10.0), "b.nii")
    singular = np.eye(4)
    singular[:3, 2] = singular[:3, 1]
    with pytest.raises(VolumeReadError, match="c.nii: singular affine"):
        check_affine(singular, "c.nii")
    with pytest.raises(VolumeReadError, match="NaN/inf"):
        check_affine(np.full((4, 4), np.nan), "d.nii")


def test_spacing_and_values():
    check_spacing((2.0, 0.7, 0.7), "ok")
    with pytest.raises(VolumeReadError, match="e.nii: implausible voxel spacing"):
        check_spacing((0.0, 0.7, 0.7), "e.nii")
    vol = np.zeros((40, 4, 4), np.float32)
    with pytest.raises(VolumeReadError, match=r"f.nii: volume is constant \(every voxel -1024 HU\)"):
        check_values(vol, "f.nii", slope=1.0, intercept=-1024.0)
    vol[35, 1, 1] = np.nan  # in the second slab
    with pytest.raises(VolumeReadError, match="g.nii: 1 NaN/inf voxel"):
        check_values(vol, "g.nii")
