"""A voxel canvas in patient millimetres and the shapes painted on it.

Coordinates are RAS+ millimetres written ``(z, y, x)``: +z toward the head, +y toward the front,
+x toward the patient's right (nibabel's RAS+: each letter names the end an axis increases toward).
The canvas array is ``(D, H, W)`` = (z, y, x) with index 0 of D inferior, the convention of
docs/architecture.md. Every shape paints only inside its bounding box, so small shapes are cheap.

Besides Hounsfield units the canvas keeps a tissue map (:class:`Tissue`), so shapes can be
restricted to tissues ("inside the right lung only") and tests can measure tissues.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache

import numpy as np


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
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(points),))
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    step = max(step, 0.4 * float(radii.min()))  # thick tubes: overlapping balls, the wall stays smooth
    s = np.arange(0.0, arc[-1] + 1e-9, step) if arc[-1] > 0 else np.zeros(1)
    centres = np.stack([np.interp(s, arc, points[:, i]) for i in range(3)], axis=1)
    return Spheres(centres, np.interp(s, arc, radii), value, tissue, within)


def segments(p0: np.ndarray, p1: np.ndarray, radii: np.ndarray | float, value: float, step: float = 1.5,
             tissue: int | None = None, within: tuple[int, ...] | None = None) -> Spheres:
    """Many straight tubes at once: segment ``i`` runs from ``p0[i]`` to ``p1[i]`` with radius ``radii[i]``.

    Shape:
        p0, p1: ``(N, 3)`` mm; radii: ``(N,)`` or a scalar.
    """
    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(p0),))
    n = np.maximum(np.ceil(np.linalg.norm(p1 - p0, axis=1) / np.maximum(step, 0.4 * radii)).astype(int), 1) + 1
    seg = np.repeat(np.arange(len(p0)), n)
    t = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    t = t / np.repeat(n - 1, n)
    centres = p0[seg] + (p1[seg] - p0[seg]) * t[:, None]
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
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None

    def paint(self, shape: Shape) -> None:
        """Paint one shape."""
        if isinstance(shape, Ellipsoid):
            self._ellipsoid(shape)
        else:
            self._spheres(shape)

    def _box(self, centre: tuple[float, ...], half: tuple[float, ...]) -> tuple[slice, ...] | None:
        sl = []
        for c, h, o, s, n in zip(centre, half, self.grid.origin, self.grid.spacing, self.grid.shape):
            lo = max(0, int(np.floor((c - h - o) / s)))
            hi = min(n, int(np.ceil((c + h - o) / s)) + 1)
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
        c, sn = np.float32(np.cos(e.rot)), np.float32(np.sin(e.rot))
        xr, yr = (x, y) if not e.rot else (c * x + sn * y, -sn * x + c * y)
        # sum of |coordinate / radius|^p: per-axis powers on 1-D / 2-D arrays, one 3-D addition
        s_xy = np.abs(yr / e.radii[1]) ** p + np.abs(xr / e.radii[2]) ** p  # (h, w)
        s_z = np.abs(z / e.radii[0]) ** p  # (d,)
        small = len(z) * s_xy.size < SMALL_BOX  # the 3-D pass is cheap: skip the set-up of the row limits
        rows = np.ones(len(z), dtype=bool) if e.plane is None or small else self._plane_rows(e, z, y, x)
        if small or rows is None or s_z.dtype != np.float32 or s_xy.dtype != np.float32:
            self._ellipsoid_dense(e, box, z, y, x, s_xy, s_z)
            return
        if e.edge > 0:
            self._ellipsoid_soft(e, box, rows, s_xy, s_z)
            return
        rows &= s_z <= 1.0  # s >= s_z: no voxel of a row with s_z > 1 lies inside
        if not rows.any():
            return
        limit = _row_limits(s_z)  # s_z + s_xy <= 1 exactly when s_xy <= limit (float32 sums)
        foot = s_xy <= limit[rows].max()  # (h, w): columns any row can reach
        if not foot.any():
            return
        (i0, i1), (j0, j1), (k0, k1) = _span(rows), _span(foot.any(axis=1)), _span(foot.any(axis=0))
        w = s_xy[None, j0:j1, k0:k1] <= limit[i0:i1, None, None]  # (d', h', w')
        if not rows[i0:i1].all():
            w &= rows[i0:i1, None, None]
        self._apply(_sub(box, (i0, i1), (j0, j1), (k0, k1)), w, e.value, e.tissue, e.within, e.add)

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
        i0, i1 = _span(rows)
        s = s_z[i0:i1, None, None] + s_xy[None]  # (d', h, w)
        r = np.sqrt(s) if e.power == 2.0 else s ** (1.0 / e.power)
        w = np.clip((1.0 - r) * (min(e.radii) / e.edge) + 0.5, 0.0, 1.0)
        if not rows[i0:i1].all():
            w = w * rows[i0:i1, None, None]
        self._apply(_sub(box, (i0, i1), (0, s_xy.shape[0]), (0, s_xy.shape[1])), w, e.value, e.tissue,
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
            allowed = _tissue_in(ts, within)
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
        if len(sp.centres) == 0:
            return
        spacing = np.asarray(self.grid.spacing)
        vox = self.grid.to_voxel(sp.centres)
        cen = np.round(vox).astype(np.int64)  # (n, 3) nearest voxel of each ball
        lin_c = self._linear(cen)  # (n,)
        flat_hu, flat_ts = self.hu.reshape(-1), self.tissue.reshape(-1)
        size = float(spacing[1:].mean())
        lins, weights = [], []
        thin = sp.radii < 0.3 * size  # much thinner than a voxel: one voxel, weighted by the filled fraction
        if thin.any():
            ok = self._inside(cen[thin])
            lins.append(lin_c[thin][ok])
            weights.append(((2 * sp.radii[thin] / size) ** 1.5)[ok])
        keys = np.ceil(sp.radii * 2)  # other balls grouped by radius (0.5 mm bins)
        keys[thin] = -1.0
        order = np.argsort(keys, kind="stable")
        bounds = np.searchsorted(keys[order], np.unique(keys[~thin]), side="left").tolist() + [len(order)]
        for q, lo, hi in zip(np.unique(keys[~thin]), bounds[:-1], bounds[1:]):
            sel = order[lo:hi]
            v, centres = vox[sel], cen[sel]
            offsets, off_mm, off_lin = self._offsets(q / 2 + 0.5 * size, spacing)
            dmm = ((centres - v) * spacing)[:, None, :] + off_mm[None, :, :]  # (n, K, 3)
            d = np.sqrt(np.einsum("nkc,nkc->nk", dmm, dmm))
            r = sp.radii[sel][:, None]
            w = np.clip(0.5 + (r - d) / size, 0.0, 1.0) * np.minimum(1.0, 2 * r / size)  # (n, K)
            ok = w > 0.02
            edge = ~(self._inside(centres + offsets.min(axis=0)) & self._inside(centres + offsets.max(axis=0)))
            if edge.any():  # balls whose offsets may leave the grid: test each voxel
                ok[edge] &= self._inside(centres[edge][:, None, :] + offsets[None, :, :])
            lins.append((lin_c[sel][:, None] + off_lin[None, :])[ok])
            weights.append(w[ok])
        if self._scratch is None:  # reused by every ball shape: zero again wherever it was written
            self._scratch = (np.zeros(flat_hu.size, dtype=np.float32), np.empty(flat_hu.size, dtype=np.int64))
        lin, w = _max_per_voxel(np.concatenate(lins), np.concatenate(weights).astype(np.float32), *self._scratch)
        if sp.within is not None:
            keep = _tissue_in(flat_ts[lin], sp.within)
            lin, w = lin[keep], w[keep]
        flat_hu[lin] += w * (np.float32(sp.value) - flat_hu[lin])
        if sp.tissue is not None:
            flat_ts[lin[w > 0.5]] = sp.tissue

    def _linear(self, idx: np.ndarray) -> np.ndarray:
        """Linear indices of integer voxel indices ``(..., 3)`` (meaningful only inside the grid)."""
        _, h, w = self.grid.shape
        return (idx[..., 0] * h + idx[..., 1]) * w + idx[..., 2]

    def _inside(self, idx: np.ndarray) -> np.ndarray:
        """Whether integer voxel indices ``(..., 3)`` lie inside the grid."""
        d, h, w = self.grid.shape
        z, y, x = idx[..., 0], idx[..., 1], idx[..., 2]
        return (z >= 0) & (z < d) & (y >= 0) & (y < h) & (x >= 0) & (x < w)

    def _offsets(self, radius: float, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel offsets of a ball (:func:`_ball_offsets`), in mm and as linear-index steps on this grid."""
        offsets = _ball_offsets(radius, spacing)
        return offsets, offsets * spacing, self._linear(offsets)


def _tissue_in(ts: np.ndarray, within: tuple[int, ...]) -> np.ndarray:
    """Whether each tissue code of ``ts`` is one of ``within`` (equality tests: faster than a lookup table)."""
    out = ts == within[0]
    for code in within[1:]:
        out |= ts == code
    return out


def _span(flags: np.ndarray) -> tuple[int, int]:
    """First and one-past-last index of the true entries of a 1-D bool array (which has one)."""
    idx = np.flatnonzero(flags)
    return int(idx[0]), int(idx[-1]) + 1


def _sub(box: tuple[slice, ...], *spans: tuple[int, int]) -> tuple[slice, ...]:
    """Slices of ``box`` narrowed to ``spans`` (offsets within the box)."""
    return tuple(slice(b.start + lo, b.start + hi) for b, (lo, hi) in zip(box, spans))


def _row_limits(s_z: np.ndarray) -> np.ndarray:
    """Per row, the largest float32 ``t >= 0`` with ``float32(s_z + t) <= 1``, so that for float32 ``s >= 0``
    ``s_z + s <= 1`` holds exactly when ``s <= t`` (float32 addition is monotone in each operand).

    Rows with ``s_z > 1`` (or NaN) get a meaningless value; callers drop them. A bisection over the float32
    bit patterns (they order non-negative floats as integers), started a few patterns around ``1 - s_z``.

    Shape:
        s_z: (d,) float32 >= 0 -> (d,) float32
    """
    one = np.float32(1.0)

    def fits(bits: np.ndarray) -> np.ndarray:
        return (s_z + bits.view(np.float32)) <= one

    guess = np.maximum(one - s_z, np.float32(0.0)).view(np.int32)
    lo, hi = np.maximum(guess - 4, 0), guess + 4
    bad = (~fits(lo) | fits(hi)) & (s_z <= one)  # the bracket missed: bisect those rows over all of [0, 2)
    lo[bad], hi[bad] = 0, np.float32(2.0).view(np.int32)
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            return lo.view(np.float32)
        mid = lo + (hi - lo) // 2
        ok = fits(mid)
        lo = np.where(open_ & ok, mid, lo)
        hi = np.where(open_ & ~ok, mid, hi)


def _max_per_voxel(lin: np.ndarray, w: np.ndarray, buf: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _ball_offsets(radius: float, spacing: np.ndarray) -> np.ndarray:
    """Integer voxel offsets ``(K, 3)`` inside a ball of ``radius`` mm (at least the centre)."""
    return _ball_offsets_cached(float(radius), tuple(float(s) for s in spacing))


@lru_cache(maxsize=512)
def _ball_offsets_cached(radius: float, spacing_t: tuple[float, float, float]) -> np.ndarray:
    spacing = np.asarray(spacing_t)
    ext = np.maximum(np.floor(radius / spacing), 0).astype(int)
    g = np.stack(np.meshgrid(*[np.arange(-e, e + 1) for e in ext], indexing="ij"), axis=-1).reshape(-1, 3)
    d = np.sqrt((((g * spacing) / max(radius, 1e-6)) ** 2).sum(axis=1))
    return g[d <= 1.0]
