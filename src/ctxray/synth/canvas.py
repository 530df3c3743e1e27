"""A voxel canvas in patient millimetres and the shapes painted on it.

Coordinates are RAS+ millimetres written ``(z, y, x)``: +z toward the head, +y toward the front,
+x toward the patient's right (nibabel's RAS+: each letter names the end an axis increases toward).
The canvas array is ``(D, H, W)`` = (z, y, x) with index 0 of D inferior, the convention of
docs/architecture.md. Every shape paints only inside its bounding box, so small shapes are cheap.

Besides Hounsfield units the canvas keeps a tissue map (:class:`Tissue`), so shapes can be
restricted to tissues ("inside the right lung only") and tests can measure tissues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from ctxray.synth import canvas_ops as ops


class Tissue(IntEnum):
    """Tissue codes of the canvas's tissue map."""

    AIR = 0
    FAT = 1
    SOFT = 2
    LUNG_R = 3
    LUNG_L = 4
    HEART = 5
    BONE = 6
    VESSEL = 7
    AIRWAY = 8
    LIVER = 9
    LESION = 10
    METAL = 11
    FLUID = 12
    GAS = 13


LUNGS = (Tissue.LUNG_R, Tissue.LUNG_L)
SMALL_BOX = 32768  # ellipsoid boxes of fewer voxels are painted with one dense pass


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid.

    Args:
        shape: ``(D, H, W)``.
        spacing: ``(sz, sy, sx)`` in mm.
        origin: mm position ``(z, y, x)`` of the centre of voxel ``(0, 0, 0)``.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @classmethod
    def centred(cls, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Grid:
        """A grid whose middle lies at ``centre`` (mm)."""
        origin = tuple(c - (n - 1) / 2 * s for c, n, s in zip(centre, shape, spacing))
        return cls(tuple(shape), tuple(float(s) for s in spacing), origin)

    def axes(self) -> list[np.ndarray]:
        """Millimetre coordinates of the voxel centres along z, y and x."""
        return [(o + s * np.arange(n)).astype(np.float32) for o, s, n in zip(self.origin, self.spacing, self.shape)]

    def to_voxel(self, point_mm: np.ndarray) -> np.ndarray:
        """Millimetres ``(..., 3)`` (z, y, x) to fractional voxel indices ``(..., 3)``."""
        return (np.asarray(point_mm, dtype=np.float64) - self.origin) / self.spacing

    def affine_xyz(self) -> np.ndarray:
        """The 4x4 NIfTI affine of the array transposed to ``[x, y, z]`` (RAS+, positive diagonal)."""
        aff = np.eye(4)
        aff[0, 0], aff[1, 1], aff[2, 2] = self.spacing[2], self.spacing[1], self.spacing[0]
        aff[:3, 3] = self.origin[2], self.origin[1], self.origin[0]
        return aff


@dataclass(frozen=True)
class Ellipsoid:
    """A (super-)ellipsoid, optionally rotated about z and cut by a plane.

    Args:
        centre: ``(z, y, x)`` mm.
        radii: ``(rz, ry, rx)`` mm.
        value: HU painted inside.
        tissue: tissue code set where painted (None keeps the map).
        within: tissues the shape may paint over (None: any).
        rot: rotation about the z axis in radians (x-y plane).
        power: 2 for an ellipsoid; larger is boxier.
        edge: soft edge width in mm (blends HU linearly; 0 is a hard edge).
        plane: ``(normal_zyx, offset)``: only points with ``normal . p <= offset`` are painted.
        add: add ``value`` to the HU instead of replacing it.
    """

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    value: float
    tissue: int | None = None
    within: tuple[int, ...] | None = None
    rot: float = 0.0
    power: float = 2.0
    edge: float = 0.0
    plane: tuple[tuple[float, float, float], float] | None = None
    add: bool = False


@dataclass(frozen=True)
class Spheres:
    """Small balls stamped at points; polylines become tubes (see :func:`tube`).

    Args:
        centres: ``(N, 3)`` mm.
        radii: ``(N,)`` mm. Balls thinner than a voxel paint one voxel with a partial-volume blend.
        value: HU.
        tissue: tissue code set where painted (None keeps the map).
        within: tissues the balls may paint over (None: any).
    """

    centres: np.ndarray
    radii: np.ndarray
    value: float
    tissue: int | None = None
    within: tuple[int, ...] | None = None


Shape = Ellipsoid | Spheres


def tube(points: np.ndarray, radii: np.ndarray | float, value: float, step: float = 1.0,
         tissue: int | None = None, within: tuple[int, ...] | None = None) -> Spheres:
    """Sample a polyline every ``step`` mm (at least 0.4 radius) into balls.

    Args:
        points: ``(K, 3)`` polyline vertices (z, y, x) mm.
        radii: one radius or ``(K,)`` radii at the vertices (interpolated along the line).
    """
    points = np.asarray(points, dtype=np.float64)
    one_radius = np.ndim(radii) == 0
    # the same operations as np.diff, np.cumsum after a leading 0 and np.min, without their argument handling
    arc = np.empty(len(points))  # (K,) arc length at each vertex
    arc[0] = 0.0
    np.cumsum(ops.row_norms(points[1:] - points[:-1]), out=arc[1:])
    if one_radius:
        radius = float(radii)
        r_min = radius
    else:
        radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(points),))
        r_min = float(np.minimum.reduce(radii))
    step = max(step, 0.4 * r_min)  # thick tubes: overlapping balls, the wall stays smooth
    end = float(arc[-1])
    s = np.arange(0.0, end + 1e-9, step) if end > 0 else np.zeros(1)
    centres = np.empty((len(s), 3))
    for i in range(3):
        centres[:, i] = np.interp(s, arc, points[:, i])
    # np.interp of a constant returns the constant exactly
    return Spheres(centres, np.full(len(s), radius) if one_radius else np.interp(s, arc, radii), value,
                   tissue, within)


def segments(p0: np.ndarray, p1: np.ndarray, radii: np.ndarray | float, value: float, step: float = 1.5,
             tissue: int | None = None, within: tuple[int, ...] | None = None) -> Spheres:
    """Many straight tubes at once: segment ``i`` runs from ``p0[i]`` to ``p1[i]`` with radius ``radii[i]``.

    Shape:
        p0, p1: ``(N, 3)`` mm; radii: ``(N,)`` or a scalar.
    """
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(p0),))
    n = np.maximum(np.ceil(ops.row_norms(p1 - p0) / np.maximum(step, 0.4 * radii)).astype(int), 1) + 1
    seg = np.repeat(np.arange(len(p0)), n)
    t = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    t = t / np.repeat(n - 1, n)
    centres = p0[seg] + (p1 - p0)[seg] * t[:, None]  # (p1 - p0)[seg] == p1[seg] - p0[seg], one gather fewer
    return Spheres(centres, radii[seg].copy(), value, tissue, within)


class Canvas:
    """HU volume plus tissue map on a :class:`Grid`, initialised to air.

    Shape:
        hu: ``(D, H, W)`` float32; tissue: ``(D, H, W)`` uint8.
    """

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.hu = np.full(grid.shape, -1000.0, dtype=np.float32)
        self.tissue = np.zeros(grid.shape, dtype=np.uint8)
        self._axes = grid.axes()
        self._origin, self._spacing = np.asarray(grid.origin, dtype=np.float64), np.asarray(grid.spacing)
        self._strides = np.array([grid.shape[1] * grid.shape[2], grid.shape[2], 1], dtype=np.int64)
        self._spacing_t = tuple(float(v) for v in grid.spacing)
        self._size = float(self._spacing[1:].mean())  # the in-plane voxel size of the balls' partial volume

    def paint(self, shape: Shape) -> None:
        """Paint one shape."""
        if isinstance(shape, Ellipsoid):
            self._ellipsoid(shape)
        else:
            self._spheres(shape)

    def _box(self, centre: tuple[float, ...], half: tuple[float, ...]) -> tuple[slice, ...] | None:
        sl = []
        for c, h, o, s, n in zip(centre, half, self.grid.origin, self.grid.spacing, self.grid.shape):
            lo = max(0, math.floor((c - h - o) / s))
            hi = min(n, math.ceil((c + h - o) / s) + 1)
            if hi <= lo:
                return None
            sl.append(slice(lo, hi))
        return tuple(sl)

    def _ellipsoid(self, e: Ellipsoid) -> None:
        rxy = max(e.radii[1], e.radii[2]) * (1.42 if e.power > 2 else 1.0) + e.edge
        box = self._box(e.centre, (e.radii[0] + e.edge, rxy, rxy))
        if box is None:
            return
        z = self._axes[0][box[0]] - np.float32(e.centre[0])  # (d,)
        y = self._axes[1][box[1]][:, None] - np.float32(e.centre[1])  # (h, 1)
        x = self._axes[2][box[2]][None, :] - np.float32(e.centre[2])  # (1, w)
        p = e.power
        if e.rot:
            c, sn = np.float32(np.cos(e.rot)), np.float32(np.sin(e.rot))
            xr, yr = c * x + sn * y, -sn * x + c * y
        else:
            xr, yr = x, y
        # sum of |coordinate / radius|^p: per-axis powers on 1-D / 2-D arrays, one 3-D addition
        s_xy = np.abs(yr / e.radii[1]) ** p + np.abs(xr / e.radii[2]) ** p  # (h, w)
        s_z = np.abs(z / e.radii[0]) ** p  # (d,)
        small = len(z) * s_xy.size < SMALL_BOX  # the 3-D pass is cheap: skip the set-up of the row limits
        rows = None if small else np.ones(len(z), dtype=bool) if e.plane is None else self._plane_rows(e, z, y, x)
        if rows is None or s_z.dtype != np.float32 or s_xy.dtype != np.float32:
            self._ellipsoid_dense(e, box, z, y, x, s_xy, s_z)
            return
        if e.edge > 0:
            self._ellipsoid_soft(e, box, rows, s_xy, s_z)
            return
        rows &= s_z <= 1.0  # s >= s_z: no voxel of a row with s_z > 1 lies inside
        if not rows.any():
            return
        limit = ops.row_limits(s_z)  # s_z + s_xy <= 1 exactly when s_xy <= limit (float32 sums)
        foot = s_xy <= limit[rows].max()  # (h, w): columns any row can reach
        if not foot.any():
            return
        (i0, i1), (j0, j1), (k0, k1) = ops.span(rows), ops.span(foot.any(axis=1)), ops.span(foot.any(axis=0))
        w = s_xy[None, j0:j1, k0:k1] <= limit[i0:i1, None, None]  # (d', h', w')
        if not rows[i0:i1].all():
            w &= rows[i0:i1, None, None]
        self._apply(ops.sub(box, (i0, i1), (j0, j1), (k0, k1)), w, e.value, e.tissue, e.within, e.add)

    @staticmethod
    def _plane_rows(e: Ellipsoid, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray | None:
        """Rows of the box on the painted side of a plane normal to z, or None for any other plane.

        For a normal ``(nz, 0, 0)`` the 3-D left side ``nz z + (0 y + 0 x)`` equals ``nz z`` exactly.
        """
        (nz, ny, nx), off = e.plane
        if ny != 0.0 or nx != 0.0:
            return None
        lhs = (nz * z)[:, None] + (ny * y + nx * x).reshape(-1)[:1]  # (d, 1): the 3-D sum's dtype, its values
        return lhs[:, 0] <= off - (nz * e.centre[0] + ny * e.centre[1] + nx * e.centre[2])

    def _ellipsoid_soft(self, e: Ellipsoid, box: tuple[slice, ...], rows: np.ndarray, s_xy: np.ndarray,
                        s_z: np.ndarray) -> None:
        """Soft-edged ellipsoid on the box rows that a z-normal plane keeps (all rows without a plane)."""
        if not rows.any():
            return
        i0, i1 = ops.span(rows)
        s = s_z[i0:i1, None, None] + s_xy[None]  # (d', h, w)
        r = np.sqrt(s) if e.power == 2.0 else s ** (1.0 / e.power)
        w = np.clip((1.0 - r) * (min(e.radii) / e.edge) + 0.5, 0.0, 1.0)
        if not rows[i0:i1].all():
            w = w * rows[i0:i1, None, None]
        self._apply(ops.sub(box, (i0, i1), (0, s_xy.shape[0]), (0, s_xy.shape[1])), w, e.value, e.tissue,
                    e.within, e.add)

    def _ellipsoid_dense(self, e: Ellipsoid, box: tuple[slice, ...], z: np.ndarray, y: np.ndarray, x: np.ndarray,
                         s_xy: np.ndarray, s_z: np.ndarray) -> None:
        """The general case: every voxel of the box (a slanted plane, or sizes that make float64 sums)."""
        p = e.power
        s = s_z[:, None, None] + s_xy[None]  # (d, h, w)
        if e.edge > 0:
            r = np.sqrt(s) if p == 2.0 else s ** (1.0 / p)
            w = np.clip((1.0 - r) * (min(e.radii) / e.edge) + 0.5, 0.0, 1.0)
        else:
            w = s <= 1.0
        if e.plane is not None:
            (nz, ny, nx), off = e.plane
            lhs = (nz * z)[:, None, None] + (ny * y + nx * x)[None]
            w = w & (lhs <= off - (nz * e.centre[0] + ny * e.centre[1] + nx * e.centre[2])) if w.dtype == bool \
                else w * (lhs <= off - (nz * e.centre[0] + ny * e.centre[1] + nx * e.centre[2]))
        self._apply(box, w, e.value, e.tissue, e.within, e.add)

    def _apply(self, box: tuple[slice, ...], w: np.ndarray, value: float, tissue: int | None,
               within: tuple[int, ...] | None, add: bool) -> None:
        """Blend ``value`` into the box with weights ``w`` (bool: hard mask)."""
        hu, ts = self.hu[box], self.tissue[box]
        if within is not None:
            allowed = ops.tissue_in(ts, within)
            if w.dtype == bool:
                w &= allowed
            else:
                w = w * allowed
        if w.dtype == bool:
            if add:
                np.add(hu, np.float32(value), out=hu, where=w)
            else:
                np.copyto(hu, np.float32(value), where=w)
            if tissue is not None:
                np.copyto(ts, np.uint8(tissue), where=w)
            return
        w = w.astype(np.float32, copy=False)
        if add:
            hu += w * np.float32(value)
        else:
            hu += w * (np.float32(value) - hu)
        if tissue is not None:
            np.copyto(ts, np.uint8(tissue), where=w > 0.5)

    def _spheres(self, sp: Spheres) -> None:
        """Stamp balls with partial-volume weights (a voxel half inside a ball gets half its value)."""
        n = len(sp.centres)
        if n == 0:
            return
        # (3, n): one row per axis, so that reductions over the balls run along contiguous rows
        vox = np.ascontiguousarray(np.asarray(sp.centres, dtype=np.float64).T)
        vox -= self._origin[:, None]
        vox /= self._spacing[:, None]  # Grid.to_voxel
        cen = np.round(vox).astype(np.int64)  # (3, n) nearest voxel of each ball
        lin_c = self._strides @ cen  # (n,) linear index (meaningful inside the grid)
        flat_hu, flat_ts = self.hu.reshape(-1), self.tissue.reshape(-1)
        size = self._size
        radii = sp.radii
        lins, weights = [], []
        thin = radii < 0.3 * size  # much thinner than a voxel: one voxel, weighted by the filled fraction
        n_thin = int(np.count_nonzero(thin))
        if n_thin:
            ok = self._inside(cen[:, thin].T)
            lins.append(lin_c[thin][ok])
            weights.append(((2 * radii[thin] / size) ** 1.5)[ok])
        if n_thin < n:
            reach = (cen.min(axis=1).tolist(), cen.max(axis=1).tolist())  # all balls' nearest voxels: a bound
            for q, sel in self._radius_groups(radii, thin, n_thin):  # other balls by radius (0.5 mm bins)
                args = (vox, cen, radii, lin_c) if sel is None else (vox[:, sel], cen[:, sel], radii[sel], lin_c[sel])
                lin, w = self._ball_group(q, *args, reach)
                lins.append(lin)
                weights.append(w)
        lin, w = (lins[0], weights[0].astype(np.float32)) if len(lins) == 1 else \
            (np.concatenate(lins), np.concatenate(weights).astype(np.float32))
        # below, every step is per voxel (max_per_voxel leaves each once): the order of the entries is free
        lin, w = ops.max_per_voxel(lin, w, *ops.scratch(flat_hu.size))
        if sp.within is not None:
            keep = ops.tissue_in(flat_ts[lin], sp.within)
            lin, w = lin[keep], w[keep]
        hu = flat_hu[lin]  # hu + w * (value - hu), in place
        step = np.subtract(np.float32(sp.value), hu)
        step *= w
        hu += step
        flat_hu[lin] = hu
        if sp.tissue is not None:
            flat_ts[lin[w > 0.5]] = sp.tissue

    def _ball_group(self, q: float, v: np.ndarray, centres: np.ndarray, r: np.ndarray, lc: np.ndarray,
                    reach: tuple[list[int], list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Voxels and weights of balls of one radius bin ``q`` with at least 0.02 weight, inside the grid.

        Entries come offset by offset (``(K, n)`` arrays: the long axis innermost), not ball by ball.

        Shape:
            v: (3, n) fractional voxel centres; centres: (3, n) their nearest voxels; r: (n,) radii mm;
            lc: (n,) linear indices of ``centres``; reach: per-axis min and max of ``centres`` or of a
            superset -> (M,) int64, (M,) float64
        """
        size = self._size
        offsets, off_mm, off_lin, span = ops.ball_table(float(q / 2 + 0.5 * size), self._spacing_t, self.grid.shape)
        a = centres - v  # (3, n)
        a *= self._spacing[:, None]
        w = ops.squared_norms(a, off_mm)  # (K, n)
        np.sqrt(w, out=w)  # d; below, in place: clip(0.5 + (r - d) / size, 0, 1) * min(1, 2 r / size)
        np.subtract(r, w, out=w)
        w /= size
        w += 0.5
        np.clip(w, 0.0, 1.0, out=w)
        w *= np.minimum(1.0, 2 * r / size)
        ok = w > 0.02
        if not self._within_grid(reach, span):
            lo_hi = (centres.min(axis=1).tolist(), centres.max(axis=1).tolist())
            if not self._within_grid(lo_hi, span):
                cen = centres.T  # (n, 3)
                edge = ~(self._inside(cen + span[0]) & self._inside(cen + span[1]))
                ok[:, edge] &= self._inside(cen[edge][None, :, :] + offsets[:, None, :])
        return (off_lin[:, None] + lc)[ok], w[ok]

    def _within_grid(self, reach: tuple[list[int], list[int]], span: np.ndarray) -> bool:
        """Whether every voxel within ``span`` (offsets ``(2, 3)``) of the box ``reach`` lies inside the grid."""
        lo, hi = span.tolist()
        return all(a + o >= 0 for a, o in zip(reach[0], lo)) and \
            all(b + o < m for b, o, m in zip(reach[1], hi, self.grid.shape))

    @staticmethod
    def _radius_groups(radii: np.ndarray, thin: np.ndarray, n_thin: int) -> list[tuple[float, np.ndarray | None]]:
        """The radius bins ``ceil(2 r)`` of the balls that are not thin, in ascending order, each with its balls
        (None: all)."""
        keys = np.ceil(radii * 2)
        if not n_thin and keys.min() == keys.max():  # one bin (a tube of one radius)
            return [(keys[0], None)]
        keys[thin] = -1.0  # below every bin (radii are positive): the thin balls sort first
        order = np.argsort(keys, kind="stable")
        ks = keys[order]
        bounds = [n_thin, *(np.flatnonzero(ks[n_thin + 1:] != ks[n_thin:-1]) + n_thin + 1).tolist(), len(ks)]
        return [(ks[lo], order[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def _inside(self, idx: np.ndarray) -> np.ndarray:
        """Whether integer voxel indices ``(..., 3)`` lie inside the grid."""
        d, h, w = self.grid.shape
        z, y, x = idx[..., 0], idx[..., 1], idx[..., 2]
        return (z >= 0) & (z < d) & (y >= 0) & (y < h) & (x >= 0) & (x < w)


def merge(spheres: list[Spheres]) -> Spheres:
    """Concatenate balls of the same value, tissue and mask into one shape (one painting pass).

    Raises:
        ValueError: if the inputs differ in value, tissue or ``within``.
    """
    first = spheres[0]
    if any((s.value, s.tissue, s.within) != (first.value, first.tissue, first.within) for s in spheres):
        raise ValueError("merge() needs balls of one value, tissue and within")
    return Spheres(np.concatenate([s.centres for s in spheres]), np.concatenate([s.radii for s in spheres]),
                   first.value, first.tissue, first.within)
