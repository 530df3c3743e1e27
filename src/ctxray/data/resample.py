"""Trilinear resampling between axis-aligned grids, streamed one output slice at a time.

Each input slice that the output needs is resampled in-plane once (rows, then columns: 1-D linear
interpolation, two neighbours per sample), kept while later output slices still need it, and output
slices are linear blends of two such slices. Nothing of the input's size is ever allocated in float,
temporaries are a few slices, and an optional ``post`` function (windowing, dtype encoding) runs on each
finished slice, so the output can be written straight in the cache dtype.

The values equal SimpleITK's linear ``ResampleImageFilter`` (checked in the tests): a sample within half
a voxel outside the input takes the edge value, farther ones take ``fill``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

EXACT = 1e-6


class AxisPlan(NamedTuple):
    """Neighbours, weights and inside-mask of the samples along one axis."""

    i0: np.ndarray
    i1: np.ndarray
    w: np.ndarray  # float32 weight of i1
    inside: np.ndarray  # bool

    @property
    def exact(self) -> bool:
        """Every sample falls on an input voxel (no interpolation needed)."""
        return not bool(np.any(self.w > EXACT))


def axis_plan(n_in: int, s_in: float, o_in: float, n_out: int, s_out: float, o_out: float) -> AxisPlan:
    """Plan one axis: output sample j sits at ``o_out + j * s_out`` mm, input voxel i at ``o_in + i * s_in``."""
    src = (o_out + np.arange(n_out) * s_out - o_in) / s_in
    inside = (src >= -0.5) & (src < n_in - 0.5)
    src = np.clip(src, 0.0, n_in - 1.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return AxisPlan(i0, i1, (src - i0).astype(np.float32), inside)


def _gather_f32(a: np.ndarray, idx: np.ndarray, axis: int) -> np.ndarray:
    """``a`` taken at ``idx`` along ``axis`` as a new float32 array (never a view of ``a``)."""
    if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        sl = slice(int(idx[0]), int(idx[0]) + len(idx))
        return np.array(a[sl] if axis == 0 else a[:, sl], dtype=np.float32)
    return np.take(a, idx, axis=axis).astype(np.float32, copy=False)  # take copies (4x faster than a[:, idx])


def _lerp_2d(a: np.ndarray, plan: AxisPlan, axis: int, fill: float) -> np.ndarray:
    """Linear interpolation of a 2-D array along ``axis`` (0 rows, 1 columns). Returns new float32."""
    lo = _gather_f32(a, plan.i0, axis)
    if not plan.exact:
        hi = _gather_f32(a, plan.i1, axis)
        w = plan.w[:, None] if axis == 0 else plan.w[None, :]
        hi -= lo
        hi *= w
        lo += hi
    if not plan.inside.all():
        if axis == 0:
            lo[~plan.inside] = fill
        else:
            lo[:, ~plan.inside] = fill
    return lo


def resample_grid(
    values: np.ndarray,
    in_spacing_zyx: tuple[float, ...] | np.ndarray,
    in_origin_zyx: tuple[float, ...] | np.ndarray,
    out_shape_zyx: tuple[int, ...],
    out_spacing_zyx: tuple[float, ...] | np.ndarray,
    out_origin_zyx: tuple[float, ...] | np.ndarray,
    fill: float,
    post: Callable[[np.ndarray], np.ndarray] | None = None,
    out_dtype: np.dtype | type = np.float32,
) -> np.ndarray:
    """Trilinear resample of a volume onto another axis-aligned grid.

    Args:
        values: any real dtype, any strides (flipped views are fine). Shape: (D, H, W).
        fill: value of output voxels outside the input.
        post: applied to each finished float32 output slice (may work in place); its result is stored.
        out_dtype: dtype of the returned array (what ``post`` returns).

    Returns:
        Shape: ``out_shape_zyx``, ``out_dtype``.
    """
    out = np.empty(tuple(int(n) for n in out_shape_zyx), dtype=out_dtype)
    slices = resample_slices(values, in_spacing_zyx, in_origin_zyx, out_shape_zyx, out_spacing_zyx, out_origin_zyx,
                             fill, post)
    for k, sl in enumerate(slices):
        out[k] = sl
    return out


def resample_slices(
    values: np.ndarray,
    in_spacing_zyx: tuple[float, ...] | np.ndarray,
    in_origin_zyx: tuple[float, ...] | np.ndarray,
    out_shape_zyx: tuple[int, ...],
    out_spacing_zyx: tuple[float, ...] | np.ndarray,
    out_origin_zyx: tuple[float, ...] | np.ndarray,
    fill: float,
    post: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[np.ndarray]:
    """:func:`resample_grid` one output slice at a time, in order (no array of the output's size: a writer can
    stream them to a file). A yielded slice may be yielded again or be internal state: copy it, never modify it.

    Shape: each slice ``out_shape_zyx[1:]``.
    """
    s_in, o_in = np.asarray(in_spacing_zyx, np.float64), np.asarray(in_origin_zyx, np.float64)
    s_out, o_out = np.asarray(out_spacing_zyx, np.float64), np.asarray(out_origin_zyx, np.float64)
    pz, py, px = (axis_plan(values.shape[a], s_in[a], o_in[a], int(out_shape_zyx[a]), s_out[a], o_out[a])
                  for a in range(3))
    plane = (int(out_shape_zyx[1]), int(out_shape_zyx[2]))
    done: dict[int, np.ndarray] = {}  # input slice -> in-plane resampled (float32, never modified)
    fill_slice = None
    for k in range(int(out_shape_zyx[0])):
        if not pz.inside[k]:
            if fill_slice is None:
                blank = np.full(plane, fill, dtype=np.float32)
                fill_slice = post(blank) if post else blank
            yield fill_slice
            continue
        i0, i1, w = int(pz.i0[k]), int(pz.i1[k]), float(pz.w[k])
        needed = (i0, i1) if w > EXACT else (i0,)
        for i in list(done):
            if i < i0:
                del done[i]
        for i in needed:
            if i not in done:
                done[i] = _lerp_2d(_lerp_2d(values[i], py, 0, fill), px, 1, fill)
        if w > EXACT:
            s = done[i1] - done[i0]
            s *= np.float32(w)
            s += done[i0]
        else:
            s = done[i0].copy() if post else done[i0]
        yield post(s) if post else s
