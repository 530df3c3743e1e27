"""Checks every volume passes before it is cached or shown to a model (``preprocess`` and ``predict`` alike).

A volume is rejected, with the file and the reason, when no resampling can make it a CT: a voxel grid
whose affine is not finite, singular or oblique beyond :data:`MAX_OBLIQUE_DEG` (DICOM and NIfTI are
treated alike: ctxray reorients by axis flips and permutations only and never silently snaps a tilted
grid onto the axes), an implausible voxel spacing, NaN/inf voxels, or one value everywhere (an
all-zeros or constant volume: checked on the stored values, before the padding added by resampling
could hide it). A grid oblique by less than :data:`MAX_OBLIQUE_DEG` is read on the nearest axes and logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ctxray.data.volume import RawVolume, VolumeReadError

log = logging.getLogger(__name__)

MAX_OBLIQUE_DEG = 3.0
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 50.0


def fmt_mm(values) -> str:
    """Numbers as a plain tuple, e.g. ``(0.75, 0.75, 2)``: never ``np.float64(...)``."""
    return "(" + ", ".join(f"{float(v):.4g}" for v in np.asarray(values, dtype=np.float64).ravel()) + ")"


def oblique_degrees(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis of ``affine`` and its nearest world axis."""
    cols = np.asarray(affine, dtype=np.float64)[:3, :3]
    cols = cols / np.linalg.norm(cols, axis=0, keepdims=True)
    cosines = np.clip(np.abs(cols).max(axis=0), 0.0, 1.0)
    return float(np.degrees(np.arccos(cosines)).max())


def check_affine(affine: np.ndarray, where: str | Path, max_oblique_deg: float = MAX_OBLIQUE_DEG) -> None:
    """Reject an affine that is not finite, singular, or oblique by more than ``max_oblique_deg``.

    Raises:
        VolumeReadError: naming ``where`` and the reason (the angle for an oblique grid).
    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)):
        raise VolumeReadError(where, "affine (voxel-to-world matrix) has NaN/inf entries")
    m = a[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if norms.min() <= 1e-6 or abs(np.linalg.det(m)) <= 1e-6 * float(np.prod(norms)):
        raise VolumeReadError(where, f"singular affine (voxel axes of length {fmt_mm(norms)} mm are zero or "
                                     "parallel): the voxel grid is undefined")
    angle = oblique_degrees(a)
    if angle > max_oblique_deg:
        raise VolumeReadError(where, f"oblique voxel grid ({angle:.1f} degrees from the nearest axes; at most "
                                     f"{max_oblique_deg:g} accepted): resample it to an axis-aligned grid first")
    if angle > 0.01:
        log.info("%s: voxel grid %.2f degrees oblique; read on the nearest axes", where, angle)


def check_spacing(spacing_zyx, where: str | Path) -> None:
    sp = np.asarray(spacing_zyx, dtype=np.float64)
    if not np.all(np.isfinite(sp)) or sp.min() < MIN_SPACING_MM or sp.max() > MAX_SPACING_MM:
        raise VolumeReadError(where, f"implausible voxel spacing {fmt_mm(sp)} mm (expected {MIN_SPACING_MM:g} "
                                     f"to {MAX_SPACING_MM:g})")


def check_values(values: np.ndarray, where: str | Path, slope: float = 1.0, intercept: float = 0.0) -> None:
    """Reject NaN/inf voxels and a constant volume; reads ``values`` in slabs (no full-size copy).

    Raises:
        VolumeReadError: naming ``where``, the count of bad voxels or the constant value in HU.
    """
    bad, lo, hi = 0, np.inf, -np.inf
    for i in range(0, values.shape[0], 32):
        slab = np.asarray(values[i : i + 32])
        if np.issubdtype(slab.dtype, np.floating):
            finite = np.isfinite(slab)
            bad += int(slab.size - finite.sum())
            slab = slab[finite]
        if slab.size:
            lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
    if bad:
        raise VolumeReadError(where, f"{bad} NaN/inf voxel(s)")
    if hi <= lo:
        raise VolumeReadError(where, f"volume is constant (every voxel {lo * slope + intercept:g} HU): "
                                     "an empty or blanked scan")


def validate_raw(raw: RawVolume, where: str | Path) -> None:
    """All checks of this module on a read volume (spacing, voxel values); the affine is checked by the readers."""
    check_spacing(raw.spacing_zyx, where)
    check_values(raw.values, where, raw.slope, raw.intercept)
