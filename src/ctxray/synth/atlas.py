"""A coarse tissue atlas of one patient, used to place lesions where they belong.

Lesions are drawn in millimetres before any CT grid exists; the atlas paints the patient's organs on
a coarse grid once, so a nodule can be put inside the right lower lobe, an effusion against the
posterior chest wall, and a node in the mediastinal fat.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ctxray.synth.anatomy import Anatomy, anatomy_shapes
from ctxray.synth.canvas import Canvas, Grid, Shape, Tissue

ATLAS_SPACING = 10.0


class Atlas:
    """Coarse organ map of a patient with lung-point sampling.

    Args:
        anatomy: the patient.
    """

    def __init__(self, anatomy: Anatomy) -> None:
        self.anatomy = anatomy
        grid = Grid.centred((40, 44, 44), (ATLAS_SPACING,) * 3, anatomy.shift)
        canvas = Canvas(grid)
        for shape in anatomy_shapes(anatomy)[0]:  # body and mediastinum, built once per patient
            canvas.paint(shape)
        self.grid = grid
        self._canvas = canvas
        self.tissue = canvas.tissue
        self._depth: dict[str, np.ndarray] = {}
        self._z, self._y, self._x = grid.axes()

    def occupy(self, shapes: list[Shape]) -> None:
        """Mark space taken by lesions (shapes that set a tissue) so later lesions avoid it.

        A nodule drawn inside an effusion or a consolidation would be invisible; this keeps every
        lesion where it can be seen, as a radiologist would report it.
        """
        painted = [s for s in shapes if s.tissue is not None]
        for shape in painted:
            self._canvas.paint(shape)
        if painted:
            self._depth.clear()

    def tissue_at(self, point: np.ndarray) -> int:
        """Tissue code at a mm point (AIR outside the atlas)."""
        i = np.round(self.grid.to_voxel(point)).astype(int)
        if np.any(i < 0) or np.any(i >= self.grid.shape):
            return int(Tissue.AIR)
        return int(self.tissue[tuple(i)])

    def lung_mask(self, side: str) -> np.ndarray:
        code = Tissue.LUNG_R if side == "right" else Tissue.LUNG_L
        return self.tissue == code

    def depth(self, side: str) -> np.ndarray:
        """Approximate distance (mm, chamfer) of each atlas voxel of one lung to the nearest non-lung voxel."""
        if side not in self._depth:
            self._depth[side] = _taxicab_depth(self.lung_mask(side)) * (ATLAS_SPACING * 0.75)
        return self._depth[side]

    def relative_height(self, side: str, z: float) -> float:
        """Height of ``z`` within the lung from base (0) to apex (1)."""
        zs = self._z[np.nonzero(self.lung_mask(side).any(axis=(1, 2)))[0]]
        return float((z - zs.min()) / max(zs.max() - zs.min(), 1.0))

    def sample_lung_point(self, side: str, rng: np.random.Generator, zone: str = "any", min_depth: float = 0.0,
                          max_depth: float = 1e9, posterior: bool = False) -> np.ndarray:
        """One random point (mm) inside one lung; see :meth:`sample_lung_points`."""
        return self.sample_lung_points(side, rng, 1, zone, min_depth, max_depth, posterior)[0]

    def sample_lung_points(self, side: str, rng: np.random.Generator, n: int, zone: str = "any",
                           min_depth: float = 0.0, max_depth: float = 1e9, posterior: bool = False) -> np.ndarray:
        """Random points (mm) inside one lung.

        Args:
            side: "right" or "left".
            zone: "upper" (top 45 %), "lower" (bottom 45 %), "middle" or "any".
            min_depth, max_depth: distance range (mm) from the lung surface (peripheral vs central).
            posterior: keep only the back half of the lung (dependent regions).

        Returns:
            ``(n, 3)`` mm positions ``(z, y, x)``.
        """
        mask = self.lung_mask(side)
        depth = self.depth(side)
        ok = mask & (depth >= min_depth) & (depth <= max_depth)
        zs = self._z[np.nonzero(mask.any(axis=(1, 2)))[0]]
        if zs.size == 0:
            raise RuntimeError("the atlas has no lung voxels; the anatomy is broken")
        t = (self._z - zs.min()) / max(zs.max() - zs.min(), 1.0)
        zone_ok = {"upper": t > 0.55, "lower": t < 0.45, "middle": (t > 0.3) & (t < 0.65)}.get(zone,
                                                                                           np.ones_like(t, bool))
        ok &= zone_ok[:, None, None]
        if posterior:
            ys = self._y[np.nonzero(mask.any(axis=(0, 2)))[0]]
            ok &= (self._y < (ys.min() + ys.max()) / 2)[None, :, None]
        idx = np.flatnonzero(ok)  # argwhere's voxels in its order, as flat indices: only the n drawn are unravelled
        if len(idx) == 0:  # constraints too tight for a small lung: relax to any lung voxel
            idx = np.flatnonzero(mask)
        iz, iy, ix = np.unravel_index(idx[rng.integers(len(idx), size=n)], ok.shape)
        jitter = rng.uniform(-0.5, 0.5, (n, 3)) * ATLAS_SPACING
        return np.stack([self._z[iz], self._y[iy], self._x[ix]], axis=1) + jitter

    def lobe(self, point: np.ndarray) -> tuple[str, str]:
        """Side and lobe name of a lung point, by height and depth (a simplified fissure geometry).

        Returns:
            ``(side, lobe)``, e.g. ``("right", "right lower lobe")``.
        """
        side = "right" if point[2] > self.anatomy.shift[2] else "left"
        t = self.relative_height(side, float(point[0]))
        front = (point[1] - self.anatomy.shift[1]) / max(self.anatomy.cavity_ay, 1.0)
        if t < 0.42 - 0.33 * front:  # below the oblique fissure: high at the back, low in front
            return side, f"{side} lower lobe"
        if side == "right" and t < 0.58 and front > 0.0:  # below the horizontal fissure, in front
            return side, "right middle lobe"
        return side, f"{side} upper lobe"


def _taxicab_depth(mask: np.ndarray) -> np.ndarray:
    """``distance_transform_cdt(mask, metric="taxicab")``, computed on the mask's bounding box grown by a voxel.

    The transform is the exact city-block distance to the nearest zero voxel, and for a voxel of the box the nearest
    one lies in the grown box (clamping a farther zero onto the grown box's border brings it closer and keeps it
    zero), so the values are the same; outside the box every voxel is zero.
    """
    out = np.zeros(mask.shape, dtype=np.int32)
    nz = [np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != i))) for i in range(mask.ndim)]
    if not len(nz[0]):
        return out
    box = tuple(slice(max(int(v[0]) - 1, 0), int(v[-1]) + 2) for v in nz)
    out[box] = ndimage.distance_transform_cdt(mask[box], metric="taxicab")
    return out
