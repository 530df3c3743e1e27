"""Volume readers for NIfTI, DICOM folders and ``.npz``, all into one array convention.

Every reader returns the stored values reoriented to RAS+ and laid out ``(D, H, W)`` = (z, y, x):
index 0 of D is inferior, H grows anterior, W grows toward the patient's right (nibabel's
``as_closest_canonical`` followed by a transpose). Reorientation is done with axis flips and
permutations only (views, no interpolation, no copy), so reading is as cheap as decompressing.

Two layers:

* :func:`read_volume_raw` keeps the stored dtype (usually int16) plus the rescale
  (``hu = values * slope + intercept``); preprocessing resamples from it without ever holding a
  full-resolution float copy (bounded memory for 512x512x1000 volumes).
* :func:`load_volume` is the contract of ``docs/architecture.md``: float32 HU.
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

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


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeReadError(path, f"expected a 3D volume, got a {data.ndim}D array of shape {tuple(data.shape)}")
    if min(data.shape) < 2:
        raise VolumeReadError(path, f"expected a 3D volume, got a flat array of shape {tuple(data.shape)}")
    return data


def _nifti_bytes(path: Path) -> bytes:
    """The whole NIfTI file in memory, gunzipped in one zlib call (nibabel's chunked gzip reads are ~2x slower)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def _nifti_header(data: bytes, path: Path):
    """The NIfTI-1/2 header of a file's bytes, after checks nibabel would silently "fix".

    nibabel's checked reader turns a zero voxel size into 1 mm; a header without sform/qform and with
    zero pixdim has no voxel size at all, so it is refused here, as are negative or zero dimensions.

    Raises:
        VolumeReadError: naming the file and the reason.
    """
    import nibabel as nib

    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.template_dtype.itemsize
        if len(data) < size:
            continue
        try:
            raw = klass.from_fileobj(io.BytesIO(data[:size]), check=False)
        except Exception:
            continue
        if raw["sizeof_hdr"] != size or bytes(raw["magic"])[:3] not in (b"n+1", b"ni1", b"n+2", b"ni2"):
            continue
        ndim = int(raw["dim"][0])
        dims = [int(n) for n in raw["dim"][1 : 1 + max(0, min(ndim, 7))]]
        if not 1 <= ndim <= 7 or any(n < 1 for n in dims):
            raise VolumeReadError(path, f"invalid NIfTI dimensions {dims} (dim[0] = {ndim}): every size must be "
                                        ">= 1")
        pix = [float(v) for v in raw["pixdim"][1:4]]
        no_xform = int(raw["sform_code"]) == 0 and int(raw["qform_code"]) == 0
        if no_xform and not all(np.isfinite(pix) & (np.abs(pix) > 0)):
            raise VolumeReadError(path, f"no voxel size: no sform/qform and pixdim {tuple(round(v, 4) for v in pix)}"
                                        " (zero or not finite)")
        try:
            return klass.from_fileobj(io.BytesIO(data[:size]), check=True)
        except Exception as err:
            raise VolumeReadError(path, f"unreadable NIfTI header ({type(err).__name__}: {err})") from err
    raise VolumeReadError(path, "unreadable NIfTI (no valid NIfTI-1/2 header)")


def read_nifti_raw(path: str | Path) -> RawVolume:
    """Read a NIfTI-1/2 file (``.nii`` / ``.nii.gz``) without converting its stored dtype.

    The file is decompressed once and the array is a read-only view on those bytes (no copy).

    Raises:
        VolumeReadError: missing or empty file, truncated or corrupt gzip, not NIfTI, bad dimensions, no voxel
            size, too little data, not 3D, an affine that is not finite, singular or oblique.
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeReadError(path, "file not found")
    try:
        data = _nifti_bytes(path)
    except (OSError, EOFError, zlib.error) as err:
        raise VolumeReadError(path, f"unreadable NIfTI (corrupt or truncated gzip: {err})") from err
    if not data:
        raise VolumeReadError(path, "empty file (0 bytes)")
    header = _nifti_header(data, path)
    shape = tuple(int(n) for n in header.get_data_shape())
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    count = int(np.prod(shape))
    if len(data) < offset + count * dtype.itemsize:
        raise VolumeReadError(path, f"unreadable NIfTI (truncated: {len(data) - offset} data bytes, shape {shape} "
                                    f"needs {count * dtype.itemsize})")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    arr = _squeeze_to_3d(arr, path)
    slope, intercept = header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    intercept = 0.0 if intercept is None or not np.isfinite(intercept) else float(intercept)
    from ctxray.data.validate import check_affine

    best = header.get_best_affine()
    check_affine(best, path)
    zyx, affine = canonical_zyx(arr, best)
    return RawVolume(zyx, spacing_from_affine(affine), affine, str(path), slope, intercept)


def read_npz_raw(path: str | Path, key: str = "ct", spacing_zyx: tuple[float, float, float] | None = None) -> RawVolume:
    """Read an ``.npz`` volume whose array (key ``key``) is already HU on the RAS (D, H, W) grid.

    Spacing: the ``spacing_zyx`` argument, else the file's ``spacing_zyx`` key, else RAD-ChestCT's
    0.8 mm (RAD-ChestCT's own axis order is handled by :func:`ctxray.data.radchest.read_radchest_raw`).

    Raises:
        VolumeReadError: missing file, not a zip, missing key, not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeReadError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if key not in npz.files:
                raise VolumeReadError(path, f"no array named {key!r} (found {sorted(npz.files)})")
            data = npz[key]
            stored_spacing = npz["spacing_zyx"] if "spacing_zyx" in npz.files else None
    except VolumeReadError:
        raise
    except Exception as err:
        raise VolumeReadError(path, f"unreadable .npz ({type(err).__name__}: {err})") from err
    data = _squeeze_to_3d(data, path)
    if spacing_zyx is None:
        spacing_zyx = (
            tuple(float(s) for s in stored_spacing) if stored_spacing is not None else (RAD_CHESTCT_SPACING_MM,) * 3
        )
    sz, sy, sx = spacing_zyx
    affine = np.diag([sx, sy, sz, 1.0])
    return RawVolume(data, (float(sz), float(sy), float(sx)), affine, str(path))


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
    from ctxray.data.radchest import read_radchest_raw

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
        from ctxray.data.dicom import read_dicom_raw

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
