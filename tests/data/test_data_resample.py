"""The streaming trilinear resampler: identity, half-voxel shifts, fill outside, slices equal the grid."""

from __future__ import annotations

import numpy as np

from ctxray.data.resample import resample_grid, resample_slices


def _vol() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)


def test_same_grid_is_identity_and_a_half_voxel_shift_averages_neighbours():
    v, sp, o = _vol(), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(resample_grid(v, sp, o, v.shape, sp, o, fill=-1.0), v)
    half = resample_grid(v, sp, o, (5, 6, 6), sp, (0.0, 0.0, 0.5), fill=-1.0)
    np.testing.assert_allclose(half, 0.5 * (v[..., :-1] + v[..., 1:]), rtol=1e-6, atol=1e-6)


def test_far_outside_is_fill_and_slices_stream_the_same_values():
    v, sp = _vol(), (2.0, 1.0, 1.0)
    out = resample_grid(v, sp, (0, 0, 0), (5, 6, 7), sp, (0.0, 0.0, 3.0), fill=-7.0)
    assert (out[..., -2:] == -7.0).all() and (out[..., :4] != -7.0).all()
    sliced = np.stack([s.copy() for s in resample_slices(v, sp, (0, 0, 0), (5, 6, 7), sp, (1.0, 0.5, 0.0), -7.0)])
    np.testing.assert_array_equal(sliced, resample_grid(v, sp, (0, 0, 0), (5, 6, 7), sp, (1.0, 0.5, 0.0), -7.0))
