"""NIfTI-1/2 files and our own ``.npz`` volumes, read without converting the stored dtype."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from ctxray.data.validate import check_affine
from ctxray.data.volume import (
    RAD_CHESTCT_SPACING_MM,
    RawVolume,
    VolumeReadError,
    canonical_zyx,
    spacing_from_affine,
    squeeze_to_3d,
)


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
    arr = squeeze_to_3d(arr, path)
    slope, intercept = header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    intercept = 0.0 if intercept is None or not np.isfinite(intercept) else float(intercept)
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
    data = squeeze_to_3d(data, path)
    if spacing_zyx is None:
        spacing_zyx = (
            tuple(float(s) for s in stored_spacing) if stored_spacing is not None else (RAD_CHESTCT_SPACING_MM,) * 3
        )
    sz, sy, sx = spacing_zyx
    affine = np.diag([sx, sy, sz, 1.0])
    return RawVolume(data, (float(sz), float(sy), float(sx)), affine, str(path))
