"""DICOM CT series -> RAS ``(D, H, W)`` volumes, without letting patient identifiers out.

A folder may hold many series: files are grouped by ``SeriesInstanceUID``, slices sorted by their
position along the slice normal (``ImagePositionPatient`` projected on the cross product of the
``ImageOrientationPatient`` cosines, never by file name or ``InstanceNumber``), the spacing between
slices is derived from those positions (not from ``SliceThickness``) and checked to be even, and
``RescaleSlope``/``RescaleIntercept`` give HU. Localizers (scouts), non-CT modalities, single
slices, multi-frame objects and series with a missing slice are rejected with a reason.

Privacy: a series is named by a derived id (a hash of its UID); the patient's name, ID, birth date
and accession number are collected only to be redacted from any path or message that leaves here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctxray.data.dicom_header import FastHeader, read_fast_header
from ctxray.data.validate import check_affine
from ctxray.data.volume import RawVolume, VolumeReadError, canonical_zyx, spacing_from_affine

log = logging.getLogger(__name__)

IDENTIFIER_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs",
                   "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
                   "OperatorsName", "StationName")
_HEADER_TAGS = ["SeriesInstanceUID", "Modality", "ImageType", "ImagePositionPatient", "ImageOrientationPatient",
                "PixelSpacing", "NumberOfFrames", "Rows", "Columns", *IDENTIFIER_TAGS]


class SkippedSeries(ValueError):
    """A series that is not a failure but not a volume either (a localizer/scout): skipped and logged."""


def series_id(uid: str) -> str:
    """Derived, non-reversible id for a series: ``dcm-`` + 16 hex digits of SHA-256 of its UID."""
    return "dcm-" + hashlib.sha256(uid.encode()).hexdigest()[:16]


def redact(text: str, identifiers: Iterable[str]) -> str:
    """Replace every identifier (3+ characters) occurring in ``text`` by ``[redacted]``."""
    for ident in sorted(set(identifiers), key=len, reverse=True):
        if len(ident) >= 3:
            text = text.replace(ident, "[redacted]")
    return text


def _identifiers(ds) -> set[str]:
    out: set[str] = set()
    for tag in IDENTIFIER_TAGS:
        value = ds.get(tag)
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
        for v in values:
            s = str(v).strip()
            if s:
                out.add(s)
                out.update(p.strip() for p in s.replace("^", " ").split() if p.strip())
    return out


@dataclass
class SliceHeader:
    path: Path
    position: np.ndarray  # (3,) LPS mm
    orientation: np.ndarray  # (6,) row cosine, column cosine
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)
    raw: RawPixels | None = None  # where plain pixel data lies (None: decode the slice with pydicom)


@dataclass(frozen=True)
class RawPixels:
    """Plain 16-bit little-endian pixel data of one slice, located by the fast header parser."""

    offset: int
    rows: int
    columns: int
    dtype: str  # "<i2" or "<u2"
    slope: float
    intercept: float


@dataclass
class DicomSeries:
    """Files of one series and what is needed to read or reject it (no identifiers kept, only their redaction set)."""

    uid: str
    modality: str
    image_types: set[str] = field(default_factory=set)
    slices: list[SliceHeader] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    identifiers: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return series_id(self.uid)


def _read_header(path: Path):
    """The header of one file: by :mod:`ctxray.data.dicom_header` in the plain case, else by pydicom (None when
    the file is not DICOM or unreadable)."""
    try:
        fast = read_fast_header(path)
    except OSError:
        fast = None
    if fast is not None:
        return fast
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError):
        return None


def _add_slice(series: DicomSeries, ds, path: Path) -> None:
    series.image_types.update(str(t).upper() for t in (ds.get("ImageType") or []))
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        series.problems.append(f"multi-frame DICOM ({frames} frames in one file) is not supported")
        return
    ipp, iop, ps = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"), ds.get("PixelSpacing")
    if ipp is None or iop is None or ps is None:
        series.problems.append("slice without ImagePositionPatient/ImageOrientationPatient/PixelSpacing")
        return
    series.slices.append(SliceHeader(path, np.array([float(v) for v in ipp]), np.array([float(v) for v in iop]),
                                     (float(ps[0]), float(ps[1])), _raw_pixels(ds)))


def _raw_pixels(ds) -> RawPixels | None:
    """Where a fast-parsed header's pixel data lies, when :func:`_pixels` would read it directly too."""
    if not isinstance(ds, FastHeader) or ds.pixel_offset is None:
        return None
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not (ds.get("BitsAllocated") == 16 and ds.get("BitsStored") == 16 and ds.get("SamplesPerPixel", 1) == 1
            and ds.get("PhotometricInterpretation") == "MONOCHROME2" and rows and cols
            and ds.pixel_length >= rows * cols * 2):
        return None
    return RawPixels(ds.pixel_offset, rows, cols, "<i2" if ds.get("PixelRepresentation") == 1 else "<u2",
                     float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0))


def scan_dicom_folder(folder: str | Path) -> list[DicomSeries]:
    """Group every DICOM file below ``folder`` by ``SeriesInstanceUID`` (non-DICOM files are ignored).

    Returns:
        Series sorted by derived id.
    """
    folder = Path(folder)
    by_uid: dict[str, DicomSeries] = {}
    paths = [folder] if folder.is_file() else sorted(
        Path(root) / f for root, _, files in os.walk(folder) for f in files if not f.startswith(".")
    )
    for path in paths:
        ds = _read_header(path)
        if ds is None or "SeriesInstanceUID" not in ds:
            continue
        uid = str(ds.get("SeriesInstanceUID"))
        series = by_uid.setdefault(uid, DicomSeries(uid, str(ds.get("Modality", "")).upper()))
        series.identifiers |= _identifiers(ds)
        _add_slice(series, ds, path)
    return sorted(by_uid.values(), key=lambda s: s.id)


def check_series(series: DicomSeries, min_slices: int = 3) -> list[SliceHeader]:
    """Validate a series and return its slices sorted inferior-to-superior along the slice normal.

    Raises:
        ValueError: the reason (non-CT, localizer, too few slices, mixed orientation, duplicate or missing
            slices, uneven spacing).
    """
    if series.modality != "CT":
        raise ValueError(f"modality {series.modality or 'missing'} is not CT")
    if "LOCALIZER" in series.image_types or "SCOUT" in series.image_types:
        raise SkippedSeries("localizer (scout) series")
    if series.problems:
        raise ValueError(series.problems[0])
    slices = series.slices
    if len(slices) < min_slices:
        raise ValueError(f"only {len(slices)} slice(s); a volume needs at least {min_slices}")
    iop = slices[0].orientation
    if len(slices) == 1:
        return slices
    if any(np.abs(s.orientation - iop).max() > 1e-3 for s in slices):
        raise ValueError("slices have different ImageOrientationPatient")
    if any(np.abs(np.subtract(s.pixel_spacing, slices[0].pixel_spacing)).max() > 1e-3 for s in slices):
        raise ValueError("slices have different PixelSpacing")
    normal = np.cross(iop[:3], iop[3:])
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    pos = np.array([s.position @ normal for s in slices])
    in_plane = np.array([[s.position @ iop[:3], s.position @ iop[3:]] for s in slices])
    if np.abs(in_plane - in_plane[0]).max() > 0.5:
        raise ValueError("slices are not stacked along the slice normal (tilted gantry or mixed stacks)")
    gaps = np.diff(pos)
    step = _median(gaps)
    if gaps.min() < 0.01 * max(step, 1e-6):
        raise ValueError(f"duplicate slice positions ({int((gaps < 0.01 * max(step, 1e-6)).sum())} pairs)")
    if gaps.max() > 1.5 * step:
        k = int(np.argmax(gaps))
        raise ValueError(f"missing slice: gap of {gaps[k]:.2f} mm after slice {k} where the spacing is {step:.2f} mm")
    if (gaps.max() - gaps.min()) > 0.1 * step:
        raise ValueError(f"uneven slice spacing ({gaps.min():.3f} to {gaps.max():.3f} mm)")
    return slices


def _median(x: np.ndarray) -> float:
    """``float(np.median(x))`` of a 1-D float array, without ``np.median``'s import of ``numpy.ma``."""
    if len(x) == 0 or np.isnan(x).any():
        return float("nan")
    s = np.sort(x)
    n = len(s)
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)


_RAW_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit / explicit VR little endian


def _pixels(ds) -> np.ndarray:
    """One slice's stored values: plain 16-bit little-endian pixel data directly, anything else via pydicom."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if (syntax in _RAW_SYNTAXES and ds.get("BitsAllocated") == 16 and ds.get("BitsStored") == 16
            and ds.get("SamplesPerPixel", 1) == 1 and ds.get("PhotometricInterpretation") == "MONOCHROME2"
            and "PixelData" in ds):
        dtype = np.dtype("<i2") if ds.get("PixelRepresentation") == 1 else np.dtype("<u2")
        rows, cols = int(ds.Rows), int(ds.Columns)
        if len(ds.PixelData) >= rows * cols * 2:
            return np.frombuffer(ds.PixelData, dtype=dtype, count=rows * cols).reshape(rows, cols)
    try:
        return ds.pixel_array
    except Exception as err:
        raise ValueError(f"cannot decode pixel data (transfer syntax {syntax or 'unknown'}): {err}") from err


def _read_pixels(slices: list[SliceHeader]) -> tuple[np.ndarray, float, float]:
    """Stack pixel data (k, row, col); one slope/intercept if shared, else float32 HU with (1, 0)."""

    def read(s: SliceHeader) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
        raw = s.raw
        if raw is not None:  # located by the header scan: one read, nothing parsed again
            with open(s.path, "rb") as f:
                f.seek(raw.offset)
                data = f.read(raw.rows * raw.columns * 2)
            if len(data) == raw.rows * raw.columns * 2:
                px = np.frombuffer(data, dtype=np.dtype(raw.dtype)).reshape(raw.rows, raw.columns)
                return px, (raw.slope, raw.intercept), (raw.rows, raw.columns)
        import pydicom  # a compressed or unusual slice, or a file changed since the scan

        try:
            ds = pydicom.dcmread(str(s.path))
            px = _pixels(ds)
        except Exception as err:  # truncated or corrupt file: name it, not only the series
            reason = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            raise ValueError(f"{s.path}: unreadable slice ({reason})") from None
        rescale = (float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0))
        return px, rescale, (int(ds.Rows), int(ds.Columns))

    first = read(slices[0])
    shape = (len(slices), *first[2])
    params = []
    vol = None
    for k, s in enumerate(slices):
        px, rescale, _ = first if k == 0 else read(s)
        if px.shape != shape[1:]:
            raise ValueError(f"{s.path}: slice {k} has shape {px.shape}, expected {shape[1:]}")
        if vol is None:
            vol = np.empty(shape, dtype=px.dtype)
        vol[k] = px
        params.append(rescale)
    if len(set(params)) == 1:
        return vol, params[0][0], params[0][1]
    hu = vol.astype(np.float32)
    for k, (slope, inter) in enumerate(params):
        hu[k] = hu[k] * slope + inter
    return hu, 1.0, 0.0


def series_affine_ras(slices: list[SliceHeader]) -> np.ndarray:
    """Voxel (col, row, slice) -> RAS mm affine of sorted slices (LPS from DICOM, x and y negated)."""
    iop = slices[0].orientation
    dr, dc = slices[0].pixel_spacing
    normal = np.cross(iop[:3], iop[3:])
    if len(slices) > 1:
        dz = float((slices[-1].position - slices[0].position) @ normal) / (len(slices) - 1)
    else:
        dz = 1.0
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = iop[:3] * dc, iop[3:] * dr, normal * dz
    lps[:3, 3] = slices[0].position
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def read_series(series: DicomSeries, where: str | Path, min_slices: int = 3) -> RawVolume:
    """Read one validated series as stored values on the RAS grid; ``source`` is the derived id.

    Raises:
        VolumeReadError: ``where`` (redacted) and the reason.
    """
    label = redact(str(where), series.identifiers)
    try:
        slices = check_series(series, min_slices=min_slices)
        values, slope, intercept = _read_pixels(slices)
    except ValueError as err:
        raise VolumeReadError(f"{label} [series {series.id}]", redact(str(err), series.identifiers)) from None
    affine = series_affine_ras(slices)
    check_affine(affine, f"{label} [series {series.id}]")
    zyx, canon = canonical_zyx(values.transpose(2, 1, 0), affine)  # stored (k, row, col) -> (col, row, k)
    return RawVolume(zyx, spacing_from_affine(canon), canon, series.id, slope, intercept)


def select_series(path: Path, series: list[DicomSeries], series_uid: str | None = None) -> DicomSeries:
    """The series to read from a folder: ``series_uid`` (a SeriesInstanceUID or its derived ``dcm-`` id), else
    the one series left once localizers are skipped.

    Raises:
        VolumeReadError: no such series, or several candidates (each listed by derived id and slice count).
        SkippedSeries: nothing but localizers (not a failure: the caller skips the folder).
    """
    if series_uid is not None:
        chosen = [s for s in series if series_uid in (s.uid, s.id)]
        if not chosen:
            asked = series_uid if series_uid.startswith("dcm-") else series_id(series_uid)
            raise VolumeReadError(path, f"no series {asked} here; found {_listing(series)}")
        return chosen[0]
    candidates, skipped = [], []
    for s in series:
        try:
            check_series(s)
        except SkippedSeries as err:
            log.info("series %s skipped: %s", s.id, err)
            skipped.append(s)
            continue
        except ValueError:
            pass  # a broken series stays a candidate so reading it reports its reason
        candidates.append(s)
    if not candidates and skipped:
        raise SkippedSeries(f"only localizer (scout) series here: {_listing(skipped)}")
    if len(candidates) > 1:
        raise VolumeReadError(path, f"{len(candidates)} series found (localizers skipped): {_listing(candidates)}; "
                                    "pick one with --series-uid (its UID or the dcm- id)")
    return (candidates or series)[0]


def _listing(series: list[DicomSeries]) -> str:
    return ", ".join(f"{s.id} ({len(s.slices)} slices{', localizer' if 'LOCALIZER' in s.image_types else ''})"
                     for s in series)


def read_dicom_raw(path: str | Path, series_uid: str | None = None) -> RawVolume:
    """Read a DICOM folder holding one CT series (localizers skipped) or ``series_uid``, or one DICOM file as a
    1-slice volume.

    Raises:
        VolumeReadError: no DICOM found, several series and no ``series_uid``, or a rejected series.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeReadError(path, "file not found")
    series = scan_dicom_folder(path)
    if not series:
        raise VolumeReadError(path, "no DICOM files found")
    try:
        chosen = select_series(path, series, series_uid)
    except SkippedSeries as err:
        raise VolumeReadError(path, str(err)) from None
    return read_series(chosen, path, min_slices=1 if path.is_file() else 3)


def _slice_dataset(pixels: np.ndarray, k: int, spacing_zyx: tuple[float, float, float], uids: tuple[str, str],
                   instance: int, rescale: tuple[float, float], patient: dict[str, str] | None):
    """One axial CT slice (uint16 pixels already in LPS row/column order) as a pydicom Dataset."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    sz, sy, sx = spacing_zyx
    h, w = pixels.shape
    meta = FileMetaDataset()
    sop = generate_uid()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", uids[0], uids[1]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for tag, value in (patient or {}).items():
        setattr(ds, tag, value)
    # LPS: columns run to the patient's left (RAS W reversed), rows to posterior (RAS H reversed).
    ds.ImagePositionPatient = [-(w - 1) * sx, -(h - 1) * sy, k * sz]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [sy, sx]
    ds.SliceThickness = sz * 2  # deliberately not the spacing: readers must use positions
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write_ct_series(
    folder: str | Path,
    hu: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    *,
    intercept: float = -1024.0,
    slope: float = 1.0,
    seed: int = 0,
    patient: dict[str, str] | None = None,
    series_uid: str | None = None,
) -> list[Path]:
    """Write a RAS HU volume as an axial CT series (LPS, uint16 + rescale), one file per slice.

    For tests, benchmarks and exporting the synthetic world to hospital-style input. File names and
    ``InstanceNumber`` are shuffled (seeded) so readers must sort by position.

    Args:
        hu: HU volume. Shape: (D, H, W) RAS.
        patient: optional identifier tags to store (e.g. ``{"PatientName": "DOE^JANE"}``).

    Returns:
        The written files.

    Raises:
        ValueError: if the HU do not fit uint16 with this slope/intercept.
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spacing = tuple(float(s) for s in spacing_zyx)
    uids = (series_uid or generate_uid(), generate_uid())
    order = np.random.default_rng(seed).permutation(hu.shape[0])
    paths = []
    for k in range(hu.shape[0]):
        stored = np.rint((np.asarray(hu[k], dtype=np.float64) - intercept) / slope)
        if stored.min() < 0 or stored.max() > 65535:
            raise ValueError(f"slice {k}: HU do not fit uint16 with slope {slope} and intercept {intercept}")
        pixels = stored.astype(np.uint16)[::-1, ::-1]
        ds = _slice_dataset(pixels, k, spacing, uids, int(order[k]) + 1, (slope, intercept), patient)
        path = folder / f"IM{order[k]:05d}.dcm"
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths
