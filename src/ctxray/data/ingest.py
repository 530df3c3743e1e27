"""What to preprocess: turn an input (CT-RATE root, RAD-ChestCT folder, NIfTI folder + reports CSV,
DICOM folder) into work items, each with its derived id, report, labels and how to read its volume.

Discovery reads only headers and CSVs; inputs that are already known to be bad (a rejected DICOM
series, a volume listed but absent, an empty report) come back as error lines, not items, so the batch
goes on. Reading volumes happens in :mod:`ctxray.data.cache`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ctxray.data.csvfile import read_csv_records
from ctxray.data.ctrate import dataset_dir, read_ctrate, resolve_ct_raw
from ctxray.data.dicom import SkippedSeries, check_series, read_series, redact, scan_dicom_folder
from ctxray.data.ids import safe_id
from ctxray.data.nifti import read_nifti_raw
from ctxray.data.radchest import (
    is_radchest_folder,
    list_radchest,
    missing_volume_error,
    radchest_split,
    read_radchest_labels,
    read_radchest_raw,
)
from ctxray.data.text import report_text
from ctxray.data.volume import RawVolume
from ctxray.labels import CT_RATE_LABELS

log = logging.getLogger(__name__)

InputKind = Literal["auto", "ctrate", "radchest", "nifti", "dicom"]
_FILE_COLUMNS = ("VolumeName", "filename", "file", "path", "image", "volume")


@dataclass
class WorkItem:
    """One volume to preprocess.

    Args:
        id: derived, filesystem-safe, unique id (the cache file is ``volumes/{id}.npy``).
        kind: reader to use: ``ctrate``, ``nifti``, ``radchest`` or ``dicom``.
        source: what the manifest and logs show (for DICOM, redacted of patient identifiers).
        payload: what the reader needs (a path, a CTRecord, a DicomSeries).
        labels: (18,) float32 with NaN for unknown, or None.
        extra: more manifest fields (e.g. ``radchest_positive``).
    """

    id: str
    kind: str
    source: str
    payload: Any
    split: str | None = None
    report: str = ""
    labels: np.ndarray | None = None
    scan_id: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class Discovery:
    items: list[WorkItem]
    errors: list[str]  # "source: reason" lines


def detect_kind(path: Path) -> str:
    """Guess the input kind of a folder (CT-RATE, RAD-ChestCT, NIfTI, DICOM)."""
    try:
        dataset_dir(path)
        return "ctrate"
    except FileNotFoundError:
        pass
    if path.is_dir() and is_radchest_folder(path):
        return "radchest"
    if path.is_dir() and any(p.name.endswith((".nii", ".nii.gz")) for p in path.rglob("*.nii*")):
        return "nifti"
    return "dicom"


def read_item(item: WorkItem) -> RawVolume:
    """Read a work item's volume (stored values + rescale) on the RAS grid."""
    if item.kind == "ctrate":
        return resolve_ct_raw(item.payload)
    if item.kind == "nifti":
        return read_nifti_raw(item.payload)
    if item.kind == "radchest":
        return read_radchest_raw(item.payload)
    if item.kind == "dicom":
        return read_series(item.payload, item.source)
    raise ValueError(f"unknown work item kind {item.kind!r}")


def _check_report(item: WorkItem, require: bool, errors: list[str]) -> bool:
    if require and not item.report.strip():
        errors.append(f"{item.source}: empty report (id {item.id})")
        return False
    return True


def discover_ctrate(root: Path, splits: list[str] | None, require_report: bool) -> Discovery:
    ds = dataset_dir(root)
    items, errors = [], []
    for split in splits or ["train", "valid"]:
        if not ((ds / split).is_dir() or (ds / f"{split}_fixed").is_dir()):
            log.info("%s: no %s volumes; skipped", ds, split)
            continue
        for rec in read_ctrate(root, split, missing="keep"):
            if not rec.path.is_file():
                errors.append(f"{rec.path}: volume file not found (listed in the {split} reports CSV)")
                continue
            item = WorkItem(id=safe_id(rec.volume_name.removesuffix(".nii.gz")), kind="ctrate", source=str(rec.path),
                            payload=rec, split=rec.split, report=rec.report, labels=rec.labels, scan_id=rec.scan_id,
                            extra={"findings": rec.findings, "impression": rec.impression})
            if _check_report(item, require_report, errors):
                items.append(item)
    return Discovery(items, errors)


def discover_radchest(folder: Path) -> Discovery:
    labels, positives = read_radchest_labels(folder)
    items, errors = [], []
    for note_id, path in list_radchest(folder):
        if path is None:
            errors.append(str(missing_volume_error(folder, note_id)))
            continue
        extra = {"radchest_positive": positives[note_id]} if note_id in positives else {}
        items.append(WorkItem(id=safe_id(note_id), kind="radchest", source=str(path), payload=path,
                              split=radchest_split(note_id), labels=labels.get(note_id), scan_id=safe_id(note_id),
                              extra=extra))
    return Discovery(items, errors)


def _label_vector(row: dict[str, str], columns: list[str]) -> np.ndarray | None:
    """The row's 18 labels (NaN where empty) or None without label columns.

    Raises:
        ValueError: a cell that is not a number (names the column and the value).
    """
    present = [n for n in CT_RATE_LABELS if n in columns]
    if not present:
        return None
    vec = np.full(len(CT_RATE_LABELS), np.nan, dtype=np.float32)
    for j, name in enumerate(CT_RATE_LABELS):
        value = (row.get(name) or "").strip()
        if value.lower() in ("", "nan"):  # unknown
            continue
        try:
            vec[j] = float(value)
        except ValueError:
            raise ValueError(f"label {name!r} = {value!r} is not a number (expected 0, 1 or empty)") from None
        if not np.isfinite(vec[j]):
            raise ValueError(f"label {name!r} = {value!r} is not a finite number")
    return vec


_REPORT_COLUMNS = ("report", "Findings_EN", "Impressions_EN", "findings", "impression")


def _row_report(row: dict[str, str], columns: list[str]) -> tuple[str, dict]:
    if "report" in columns:
        return report_text(row["report"], ""), {}
    findings = report_text(row.get("Findings_EN", row.get("findings", "")), "")
    impression = report_text(row.get("Impressions_EN", row.get("impression", "")), "")
    return report_text(findings, impression), {"findings": findings, "impression": impression}


def discover_nifti(folder: Path, reports_csv: Path | None, require_report: bool) -> Discovery:
    """NIfTI files below ``folder``; with ``reports_csv`` only its rows, with their report and labels.

    The CSV needs a file column (one of ``VolumeName, filename, file, path, image, volume``: a path relative
    to ``folder`` or a file name) and a report (``report``, or ``Findings_EN``/``Impressions_EN``, or
    ``findings``/``impression``); optional ``split`` and any of the 18 label columns.
    """
    files = sorted(p for p in folder.rglob("*") if p.name.endswith((".nii", ".nii.gz")))
    by_rel = {p.relative_to(folder).as_posix(): p for p in files}
    by_name: dict[str, list[Path]] = {}
    for p in files:
        by_name.setdefault(p.name, []).append(p)
    stems = [p.name.removesuffix(".gz").removesuffix(".nii") for p in files]
    unique_stems = len(set(stems)) == len(stems)

    def make_id(p: Path) -> str:
        rel = p.relative_to(folder).as_posix()
        return safe_id(p.name.removesuffix(".gz").removesuffix(".nii") if unique_stems else rel)

    if reports_csv is None:
        return Discovery([WorkItem(id=make_id(p), kind="nifti", source=str(p), payload=p) for p in files], [])
    columns, records = read_csv_records(reports_csv)
    file_col = next((c for c in _FILE_COLUMNS if c in columns), None)
    if file_col is None:
        raise ValueError(f"{reports_csv}: no file column (one of {list(_FILE_COLUMNS)}); found {columns}")
    if not any(c in columns for c in _REPORT_COLUMNS):
        raise ValueError(f"{reports_csv}: no report column (one of {list(_REPORT_COLUMNS)}); found {columns}")
    items, errors = [], []
    for line, row in records:
        ref = (row.get(file_col) or "").strip()
        where = f"{reports_csv}, line {line}"
        if not ref:
            errors.append(f"{where}: empty {file_col} cell; row skipped")
            continue
        path = by_rel.get(ref) or (Path(ref) if Path(ref).is_absolute() and Path(ref).is_file() else None)
        if path is None:
            cands = by_name.get(Path(ref).name, [])
            if len(cands) > 1:
                errors.append(f"{folder / ref}: ambiguous file name ({len(cands)} files of that name)")
                continue
            path = cands[0] if cands else None
        if path is None:
            errors.append(f"{folder / ref}: volume file not found (listed in {where})")
            continue
        try:
            labels = _label_vector(row, columns)
        except ValueError as err:
            errors.append(f"{path}: {where}: {err}; volume skipped")
            continue
        report, extra = _row_report(row, columns)
        item = WorkItem(id=make_id(path) if path in files else safe_id(path.name), kind="nifti", source=str(path),
                        payload=path, split=(row.get("split") or None), report=report, labels=labels, extra=extra)
        if _check_report(item, require_report, errors):
            items.append(item)
    return Discovery(items, errors)


def discover_dicom(folder: Path) -> Discovery:
    """One item per valid CT series below ``folder``; rejected series become error lines (redacted), localizers
    are logged as skipped (not errors)."""
    items, errors = [], []
    series_list = scan_dicom_folder(folder)
    if not series_list:
        errors.append(f"{folder}: no DICOM files found")
    for series in series_list:
        parents = {s.path.parent for s in series.slices} or {folder}
        where = redact(str(min(parents)), series.identifiers)
        try:
            check_series(series)
        except SkippedSeries as err:  # a scout beside its CT is expected, not a failed input
            log.info("%s: series %s skipped: %s", where, series.id, redact(str(err), series.identifiers))
            continue
        except ValueError as err:
            errors.append(f"{where}: series {series.id}: {redact(str(err), series.identifiers)}")
            continue
        items.append(WorkItem(id=series.id, kind="dicom", source=where, payload=series, scan_id=series.id))
    return Discovery(items, errors)


def discover(
    path: str | Path,
    kind: InputKind = "auto",
    reports_csv: str | Path | None = None,
    splits: list[str] | None = None,
    require_report: bool | None = None,
) -> Discovery:
    """Work items for an input.

    Args:
        path: CT-RATE root, RAD-ChestCT folder, NIfTI folder or DICOM folder.
        kind: input kind, ``auto`` to detect it.
        reports_csv: reports for a NIfTI folder.
        splits: CT-RATE splits to take (default both).
        require_report: log and skip volumes with an empty report; default: when the input has reports
            (CT-RATE, NIfTI + CSV).

    Raises:
        FileNotFoundError / ValueError: the input as a whole is unusable (missing CSV, missing column).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input not found")
    kind = detect_kind(path) if kind == "auto" else kind
    log.info("reading the input as %s", kind)  # not the path: a DICOM folder name may hold identifiers
    has_reports = kind == "ctrate" or (kind == "nifti" and reports_csv is not None)
    require = has_reports if require_report is None else require_report
    if kind == "ctrate":
        found = discover_ctrate(path, splits, require)
    elif kind == "radchest":
        found = discover_radchest(path)
    elif kind == "nifti":
        found = discover_nifti(path, Path(reports_csv) if reports_csv else None, require)
    elif kind == "dicom":
        found = discover_dicom(path)
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    counts = Counter(it.id for it in found.items)
    dup = sorted(i for i, n in counts.items() if n > 1)
    if dup:
        raise ValueError(f"{path}: duplicate volume ids {dup[:5]}")
    return found
