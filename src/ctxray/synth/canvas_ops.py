"""Array helpers of :mod:`ctxray.synth.canvas`: tissue masks, exact float32 row limits, ball offsets, and the
per-voxel maximum of ball weights. Each gives bit for bit what the plain whole-box computation gives.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def tissue_in(ts: np.ndarray, within: tuple[int, ...]) -> np.ndarray:
    """Whether each tissue code of ``ts`` is one of ``within`` (equality tests: faster than a lookup table)."""
    out = ts == within[0]
    for code in within[1:]:
        out |= ts == code
    return out


def row_norms(x: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """Euclidean norms of the rows of a float ``(n, m)`` array: ``np.linalg.norm(x, axis=1)``'s own operations
    (``sqrt`` of the reduced ``x * x``) without its argument handling.
    """
    return np.sqrt(np.add.reduce(x * x, axis=1, keepdims=keepdims))


def span(flags: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index of the true entries of a 1-D bool array (which has one)."""
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1]) + 1


def sub(box: tuple[slice, ...], *spans: tuple[int, int]) -> tuple[slice, ...]:
    """Slices of ``box`` narrowed to ``spans`` (offsets within the box)."""
    return tuple(slice(b.start + lo, b.start + hi) for b, (lo, hi) in zip(box, spans))


def row_limits(s_z: np.ndarray) -> np.ndarray:
    """Per row, the largest float32 ``t >= 0`` with ``float32(s_z + t) <= 1``, so that for float32 ``s >= 0``
    ``s_z + s <= 1`` holds exactly when ``s <= t`` (float32 addition is monotone in each operand).

    Rows with ``s_z > 1`` (or NaN) get a meaningless value; callers drop them. A bisection over the float32
    bit patterns (they order non-negative floats as integers) checks the closed-form guess.

    Shape:
        s_z: (d,) float32 >= 0 -> (d,) float32
    """
    one = np.float32(1.0)

    def fits(bits: np.ndarray) -> np.ndarray:
        return (s_z + bits.view(np.float32)) <= one

    # float32(x) <= 1 exactly when x <= 1 + 2**-24 (a tie rounds to the even 1), so t is the largest float32
    # not above c = 1 + 2**-24 - s_z, which float64 holds exactly for s_z >= 2**-29 (and closely enough below)
    c = (1.0 + 2.0**-24) - s_z.astype(np.float64)
    t = c.astype(np.float32)
    t = np.where(t.astype(np.float64) > c, np.nextafter(t, np.float32(0.0)), t)
    lo = np.maximum(t, np.float32(0.0)).view(np.int32)
    hi = lo + 1
    bad = (~fits(lo) | fits(hi)) & (s_z <= one)  # checked all the same; any miss: bisect over all of [0, 2)
    lo[bad], hi[bad] = 0, np.float32(2.0).view(np.int32)
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            return lo.view(np.float32)
        mid = lo + (hi - lo) // 2
        ok = fits(mid)
        lo = np.where(open_ & ok, mid, lo)
        hi = np.where(open_ & ~ok, mid, hi)


def max_per_voxel(lin: np.ndarray, w: np.ndarray, buf: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each voxel of ``lin`` once, with the largest of its weights ``w``; zero weights dropped.

    Works in scratch buffers of the grid's size touched only at ``lin``, so its cost follows the number of
    entries, not the span of voxels they cover (a vessel tree spans the whole grid). ``buf`` must be all
    zeros and is left so; ``last`` may hold anything.

    Shape:
        lin: (N,) int64 linear voxel indices; w: (N,) float32 -> (M,), (M,)
    """
    if not len(lin):
        return lin, w
    np.maximum.at(buf, lin, w)  # per voxel keep the largest weight
    order = np.arange(len(lin))
    last[lin] = order  # the last entry naming each voxel wins
    lin = lin[last[lin] == order]
    w = buf[lin]
    buf[lin] = 0.0
    keep = w > 0
    return lin[keep], w[keep]


@lru_cache(maxsize=4)
def scratch(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The two scratch buffers of :func:`max_per_voxel` for a grid of ``size`` voxels, shared by every canvas of
    the process (it leaves the first all zeros): fresh ones per canvas cost more in page faults than the balls.
    """
    return np.zeros(size, dtype=np.float32), np.empty(size, dtype=np.int64)


@lru_cache(maxsize=256)
def ball_table(radius: float, spacing: tuple[float, float, float],
               shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Voxel offsets ``(K, 3)`` of a ball (:func:`ball_offsets`), in mm ``(3, K)``, as linear-index steps on a grid
    of ``shape``, and their per-axis minimum and maximum ``(2, 3)``; cached for every canvas of the process."""
    offsets = ball_offsets(radius, np.asarray(spacing))
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    return offsets, np.ascontiguousarray((offsets * np.asarray(spacing)).T), offsets @ strides, \
        np.stack([offsets.min(axis=0), offsets.max(axis=0)])


def squared_norms(a: np.ndarray, off_mm: np.ndarray) -> np.ndarray:
    """``|a[i] + off[k]|^2`` for every pair, bit for bit what ``einsum("nkc,nkc->nk", d, d)`` of the ``(n, K, 3)``
    sums ``d`` gives on this NumPy: ``(z^2 + x^2) + y^2`` (its SIMD kernel pairs the first and last terms), built
    axis by axis on ``(K, n)`` arrays instead of one strided ``(n, K, 3)`` array.

    Shape:
        a: (3, n) mm, one row per axis; off_mm: (3, K) mm, one row per axis -> (K, n)
    """
    out = off_mm[0][:, None] + a[0]
    out *= out
    term = off_mm[2][:, None] + a[2]
    term *= term
    out += term
    np.add(off_mm[1][:, None], a[1], out=term)
    term *= term
    out += term
    return out


def ball_offsets(radius: float, spacing: np.ndarray) -> np.ndarray:
    """Integer voxel offsets ``(K, 3)`` inside a ball of ``radius`` mm (at least the centre)."""
    return _ball_offsets_cached(float(radius), tuple(float(s) for s in spacing))


@lru_cache(maxsize=512)
def _ball_offsets_cached(radius: float, spacing_t: tuple[float, float, float]) -> np.ndarray:
    spacing = np.asarray(spacing_t)
    ext = np.maximum(np.floor(radius / spacing), 0).astype(int)
    g = np.stack(np.meshgrid(*[np.arange(-e, e + 1) for e in ext], indexing="ij"), axis=-1).reshape(-1, 3)
    d = np.sqrt((((g * spacing) / max(radius, 1e-6)) ** 2).sum(axis=1))
    return g[d <= 1.0]
