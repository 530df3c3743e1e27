"""Read any supported volume (NIfTI, DICOM file or folder, ``.npz``) by dispatching to the format readers.

The readers (:mod:`ctxray.data.nifti`, :mod:`ctxray.data.dicom`, :mod:`ctxray.data.radchest`) all return the
types of :mod:`ctxray.data.volume`: stored values on the RAS ``(D, H, W)`` grid.

Two layers:

* :func:`read_volume_raw` keeps the stored dtype (usually int16) plus the rescale
  (``hu = values * slope + intercept``); preprocessing resamples from it without ever holding a
  full-resolution float copy (bounded memory for 512x512x1000 volumes).
* :func:`load_volume` is the contract of ``docs/architecture.md``: float32 HU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxray.data.dicom import read_dicom_raw
from ctxray.data.nifti import read_nifti_raw, read_npz_raw
from ctxray.data.radchest import read_radchest_raw
from ctxray.data.volume import RawVolume, Volume, VolumeReadError

__all__ = ["RawVolume", "Volume", "VolumeReadError", "load_volume", "read_volume_raw"]


def _read_any_npz(path: Path) -> RawVolume:
    """An ``.npz`` with a ``spacing_zyx`` key is ours (RAS); one without is read as RAD-ChestCT."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            ours = "spacing_zyx" in npz.files
    except Exception as err:
        if not path.is_file():
            raise VolumeReadError(path, "file not found") from None
        raise VolumeReadError(path, f"unreadable .npz ({type(err).__name__}: {err})") from err
    if ours:
        return read_npz_raw(path)
    return read_radchest_raw(path)


def read_volume_raw(path: str | Path, series_uid: str | None = None) -> RawVolume:
    """Read a NIfTI file, an ``.npz``, a DICOM file or a DICOM folder (one series) as stored values.

    Args:
        path: file or folder.
        series_uid: for a DICOM folder with several series, which one.

    Raises:
        VolumeReadError: naming the file and the reason.
    """
    path = Path(path)
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        return read_dicom_raw(path, series_uid=series_uid)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti_raw(path)
    if name.endswith(".npz"):
        return _read_any_npz(path)
    if not path.exists():
        raise VolumeReadError(path, "file not found")
    raise VolumeReadError(path, "unknown volume format (expected .nii, .nii.gz, .npz, .dcm or a DICOM folder)")


def load_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """Read a volume in HU on the RAS ``(D, H, W)`` grid (see module docstring).

    Returns:
        :class:`Volume` with ``hu`` Shape: (D, H, W) float32.
    """
    return read_volume_raw(path, series_uid=series_uid).to_volume()
