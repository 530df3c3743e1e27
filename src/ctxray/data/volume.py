"""The in-memory volume types every reader returns, and the RAS reorientation they share.

Every reader returns the stored values reoriented to RAS+ and laid out ``(D, H, W)`` = (z, y, x):
index 0 of D is inferior, H grows anterior, W grows toward the patient's right (nibabel's
``as_closest_canonical`` followed by a transpose). Reorientation is done with axis flips and
permutations only (views, no interpolation, no copy), so reading is as cheap as decompressing.
The format readers (:mod:`ctxray.data.nifti`, :mod:`ctxray.data.dicom`, :mod:`ctxray.data.radchest`)
sit on this module; :mod:`ctxray.data.readers` dispatches to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

RAD_CHESTCT_SPACING_MM = 0.8
"""RAD-ChestCT stores isotropic 0.8 mm volumes; used for an ``.npz`` that carries no spacing."""


class VolumeReadError(ValueError):
    """A volume could not be read; the message starts with the file and states the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass
class Volume:
    """A CT volume in HU on the RAS ``(D, H, W)`` grid.

    Args:
        hu: Hounsfield units. Shape: (D, H, W) float32.
        spacing_zyx: voxel size in mm along (D, H, W).
        affine: 4x4 voxel-to-RAS-mm matrix of the array as nibabel would write it (index order x, y, z,
            i.e. the transpose of ``hu``'s axes).
        source: where it came from (a path, or a derived id for DICOM).
    """

    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    affine: np.ndarray
    source: str


@dataclass
class RawVolume:
    """Stored values before the HU rescale, already on the RAS ``(D, H, W)`` grid.

    Args:
        values: stored values (int16, uint16, float...), possibly a non-contiguous view.
            Shape: (D, H, W).
        spacing_zyx: voxel size in mm along (D, H, W).
        affine: 4x4 voxel-to-RAS-mm matrix (x, y, z index order), as in :class:`Volume`.
        source: where it came from.
        slope, intercept: ``hu = values * slope + intercept``.
    """

    values: np.ndarray
    spacing_zyx: tuple[float, float, float]
    affine: np.ndarray
    source: str
    slope: float = 1.0
    intercept: float = 0.0

    def hu(self) -> np.ndarray:
        """The values in HU. Shape: (D, H, W) float32 (a new contiguous array)."""
        out = np.array(self.values, dtype=np.float32, order="C")
        if self.slope != 1.0:
            out *= np.float32(self.slope)
        if self.intercept != 0.0:
            out += np.float32(self.intercept)
        return out

    def to_volume(self) -> Volume:
        return Volume(self.hu(), self.spacing_zyx, self.affine, self.source)


def canonical_zyx(data_xyz: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient ``[x, y, z]``-indexed data with a RAS affine to RAS+ and transpose to (z, y, x).

    Args:
        data_xyz: array indexed (i, j, k) as NIfTI stores it. Shape: (I, J, K).
        affine: 4x4 voxel (i, j, k) -> RAS mm.

    Returns:
        (view of the data shaped (D, H, W), affine of the canonical (x, y, z) array).
    """
    ornt = _near_axes_orientation(affine)
    if ornt is None:  # far from the axes: nibabel's polar decomposition decides
        from nibabel.orientations import io_orientation

        ornt = io_orientation(affine)
    data = data_xyz
    for ax, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            data = np.flip(data, axis=ax)
    data = data.transpose(np.argsort(ornt[:, 0]))
    # voxel index of the reoriented array -> the original's (nibabel's inv_ornt_aff, same arithmetic)
    undo_reorder = np.eye(4)[[int(v) for v in ornt[:, 0]] + [3], :]
    undo_flip = np.diag([*ornt[:, 1], 1.0])
    centre = -(np.array(data_xyz.shape[:3]) - 1) / 2.0
    undo_flip[:3, 3] = ornt[:, 1] * centre - centre
    return data.transpose(2, 1, 0), affine @ np.dot(undo_flip, undo_reorder)


def _near_axes_orientation(affine: np.ndarray, min_cosine: float = 0.99) -> np.ndarray | None:
    """nibabel's ``io_orientation`` for an affine whose voxel axes lie within ~8 degrees of distinct world axes
    (each column's nearest axis and sign), without importing nibabel; None for any other affine.

    Returns:
        (3, 2) float: world axis and sign (+1/-1) of each voxel axis.
    """
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.sqrt((m * m).sum(axis=0))
    if not np.all(np.isfinite(m)) or norms.min() <= 0:
        return None
    cols = m / norms
    axes = np.abs(cols).argmax(axis=0)
    if sorted(axes.tolist()) != [0, 1, 2] or np.abs(cols).max(axis=0).min() < min_cosine:
        return None
    signs = np.where(cols[axes, [0, 1, 2]] < 0, -1.0, 1.0)
    return np.stack([axes.astype(np.float64), signs], axis=1)


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (sz, sy, sx) in mm of a canonical (x, y, z) affine."""
    sx, sy, sz = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    # Headers store float32: round away the 1e-8 noise so spacings compare and print cleanly.
    return round(float(sz), 6), round(float(sy), 6), round(float(sx), 6)


def squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """Drop trailing singleton axes; a volume must then be 3D with every side >= 2 (else VolumeReadError)."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeReadError(path, f"expected a 3D volume, got a {data.ndim}D array of shape {tuple(data.shape)}")
    if min(data.shape) < 2:
        raise VolumeReadError(path, f"expected a 3D volume, got a flat array of shape {tuple(data.shape)}")
    return data
