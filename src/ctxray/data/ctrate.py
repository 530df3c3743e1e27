"""CT-RATE reader: both releases, CT-RATE's own (irregular) file names.

Layout under ``root`` (``root`` may be the folder holding ``dataset/`` or ``dataset/`` itself)::

    dataset/train/ | train_fixed/        train_1/train_1_a/train_1_a_1.nii.gz   (v1 | v2 volumes)
    dataset/valid/ | valid_fixed/        valid_1/valid_1_a/valid_1_a_1.nii.gz
    dataset/radiology_text_reports/      train_reports.csv, validation_reports.csv
    dataset/multi_abnormality_labels/    train_predicted_labels.csv, valid_predicted_labels.csv
    dataset/metadata/                    train_metadata.csv, validation_metadata.csv

The first release (v1, ``train``/``valid``) has NIfTI headers without the right spacing (it is taken
from the metadata's ``XYSpacing`` "[0.75, 0.75]" and ``ZSpacing``) and may store raw values that still
need ``RescaleSlope``/``RescaleIntercept``; the corrected release (v2, ``*_fixed``) is HU already.
:func:`load_ct_volume` decides from the values whether the rescale still applies, so it is never
applied twice whatever the folder is called.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ctxray.data.csvfile import read_csv_records
from ctxray.data.nifti import read_nifti_raw
from ctxray.data.text import report_text
from ctxray.data.volume import RawVolume, VolumeReadError
from ctxray.labels import CT_RATE_LABELS

log = logging.getLogger(__name__)

Split = Literal["train", "valid"]
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid"}
REPORTS_CSV = {"train": "radiology_text_reports/train_reports.csv",
               "valid": "radiology_text_reports/validation_reports.csv"}
LABELS_CSV = {"train": "multi_abnormality_labels/train_predicted_labels.csv",
              "valid": "multi_abnormality_labels/valid_predicted_labels.csv"}
METADATA_CSV = {"train": "metadata/train_metadata.csv", "valid": "metadata/validation_metadata.csv"}
REPORT_COLUMNS = ("VolumeName", "Findings_EN", "Impressions_EN")
METADATA_COLUMNS = ("VolumeName", "XYSpacing", "ZSpacing", "RescaleSlope", "RescaleIntercept")


@dataclass
class CTRecord:
    """One CT-RATE volume with its report, labels and metadata.

    Args:
        volume_name: e.g. ``train_1_a_1.nii.gz``.
        split: ``train`` or ``valid``.
        path: the NIfTI file.
        findings, impression: cleaned report fields ('' if not given).
        report: ``report_text(findings, impression)``.
        labels: the 18 labels in ``labels.json`` order, or None without a labels file. Shape: (18,) float32.
        spacing_zyx: from the metadata (None without metadata).
        rescale_slope, rescale_intercept: from the metadata (1, 0 without).
        release: ``v1`` (``train``/``valid`` folders) or ``v2`` (``*_fixed`` folders).
    """

    volume_name: str
    split: str
    path: Path
    findings: str
    impression: str
    report: str
    labels: np.ndarray | None
    spacing_zyx: tuple[float, float, float] | None
    rescale_slope: float
    rescale_intercept: float
    release: str

    @property
    def scan_id(self) -> str:
        """``{split}_{patient}_{scan}``: reconstructions of one scan share it."""
        return scan_id(self.volume_name)


def _name_parts(volume_name: str) -> list[str]:
    stem = volume_name[: -len(".nii.gz")] if volume_name.endswith(".nii.gz") else volume_name
    parts = stem.split("_")
    if len(parts) != 4 or parts[0] not in ("train", "valid"):
        raise ValueError(f"{volume_name!r} is not a CT-RATE volume name ({{split}}_{{patient}}_{{scan}}_{{recon}})")
    return parts


def scan_id(volume_name: str) -> str:
    """``train_12_a_2.nii.gz`` -> ``train_12_a``."""
    return "_".join(_name_parts(volume_name)[:3])


def volume_relpath(volume_name: str) -> Path:
    """``train_1_a_1.nii.gz`` -> ``train_1/train_1_a/train_1_a_1.nii.gz`` (below the split folder)."""
    s, pid, scan, recon = _name_parts(volume_name)
    return Path(f"{s}_{pid}") / f"{s}_{pid}_{scan}" / f"{s}_{pid}_{scan}_{recon}.nii.gz"


def dataset_dir(root: str | Path) -> Path:
    """The ``dataset`` folder of a CT-RATE root (accepts the root, ``dataset/`` itself, or a parent of ``ct-rate/``)."""
    root = Path(root)
    for cand in (root / "dataset", root, root / "ct-rate" / "dataset"):
        if (cand / "radiology_text_reports").is_dir():
            return cand
    raise FileNotFoundError(f"{root}: not a CT-RATE root (no dataset/radiology_text_reports folder)")


def read_csv_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV as dicts (encoding detected: :mod:`ctxray.data.csvfile`); errors name the file and the
    missing columns."""
    return [row for _, row in read_csv_records(path, required)[1]]


def _parse_float(value: str, path: Path, row: str, column: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {row}: cannot read {column}={value!r} as a number") from None


def _metadata_row(row: dict[str, str], path: Path, name: str) -> tuple[tuple[float, float, float], float, float]:
    try:
        xy = ast.literal_eval(row["XYSpacing"].strip())
        sy, sx = (float(xy[0]), float(xy[1])) if isinstance(xy, list | tuple) else (float(xy), float(xy))
    except (ValueError, SyntaxError, TypeError, IndexError):
        raise ValueError(f"{path}: {name}: cannot read XYSpacing={row['XYSpacing']!r}") from None
    sz = _parse_float(row["ZSpacing"], path, name, "ZSpacing")
    slope_raw = row["RescaleSlope"].strip()
    inter_raw = row["RescaleIntercept"].strip()
    slope = _parse_float(slope_raw, path, name, "RescaleSlope") if slope_raw else 1.0
    inter = _parse_float(inter_raw, path, name, "RescaleIntercept") if inter_raw else 0.0
    return (sz, sy, sx), slope, inter


def read_metadata(path: Path) -> dict[str, tuple[tuple[float, float, float], float, float]]:
    """``VolumeName -> (spacing_zyx, slope, intercept)`` from a CT-RATE metadata CSV.

    A row with an unreadable value is left out with a warning naming the file, line and value (its volume
    is then refused when it needs the metadata, as a volume without a row is), so one bad row never
    costs the others.
    """
    out = {}
    for line, row in read_csv_records(path, METADATA_COLUMNS)[1]:
        name = row["VolumeName"]
        try:
            out[name] = _metadata_row(row, path, name)
        except ValueError as err:
            log.warning("line %d of %s; row left out", line, err)
    return out


def read_labels_csv(path: Path) -> dict[str, np.ndarray]:
    """``VolumeName -> (18,) float32`` in ``labels.json`` order from a CT-RATE labels CSV.

    A cell that is not a number (e.g. ``yes``) is read as unknown (NaN) with a warning naming the file,
    line, column and value; the row's other labels are kept.
    """
    out = {}
    for line, row in read_csv_records(path, ("VolumeName", *CT_RATE_LABELS))[1]:
        vec = np.full(len(CT_RATE_LABELS), np.nan, dtype=np.float32)
        for j, n in enumerate(CT_RATE_LABELS):
            value = (row[n] or "").strip()
            try:
                vec[j] = float(value) if value else np.nan
            except ValueError:
                log.warning("%s, line %d (%s): label %r = %r is not a number; read as unknown", path, line,
                            row["VolumeName"], n, value)
        out[row["VolumeName"]] = vec
    return out


def _volume_dir(ds: Path, split: str, release: str) -> tuple[Path, str]:
    cands = {"v2": ds / f"{split}_fixed", "v1": ds / split}
    order = ["v2", "v1"] if release == "auto" else [release]
    for rel in order:
        if cands[rel].is_dir():
            return cands[rel], rel
    tried = ", ".join(str(cands[r]) for r in order)
    raise FileNotFoundError(f"{ds}: no volume folder for split {split!r} (looked for {tried})")


def read_ctrate(
    root: str | Path,
    split: str,
    release: Literal["auto", "v1", "v2"] = "auto",
    missing: Literal["error", "skip", "keep"] = "error",
) -> list[CTRecord]:
    """List a CT-RATE split: one record per row of the reports CSV.

    Args:
        root: CT-RATE root (see :func:`dataset_dir`).
        split: ``train`` or ``valid`` (``validation`` accepted).
        release: which volume folder; ``auto`` prefers ``*_fixed`` (v2) when present.
        missing: a report row whose volume file is absent raises (``error``), is dropped (``skip``) or
            is kept so the caller reports it per volume (``keep``).

    Returns:
        Records in the reports CSV's order.

    Raises:
        FileNotFoundError / ValueError: naming the file and the problem (missing column, bad value,
            missing volume, v1 volumes without a metadata file).
    """
    split = _SPLIT_ALIASES.get(split, split)
    if split not in ("train", "valid"):
        raise ValueError(f"unknown CT-RATE split {split!r}; use train or valid")
    ds = dataset_dir(root)
    vol_dir, rel = _volume_dir(ds, split, release)
    reports = read_csv_rows(ds / REPORTS_CSV[split], REPORT_COLUMNS)
    labels_path, meta_path = ds / LABELS_CSV[split], ds / METADATA_CSV[split]
    labels = read_labels_csv(labels_path) if labels_path.is_file() else {}
    if not labels_path.is_file():
        log.warning("%s: no labels file; records carry labels=None", labels_path)
    if meta_path.is_file():
        meta = read_metadata(meta_path)
    elif rel == "v1":
        raise FileNotFoundError(f"{meta_path}: file not found (v1 volumes need the metadata for spacing and rescale)")
    else:
        meta = {}
    records = []
    for row in reports:
        name = row["VolumeName"].strip()
        path = vol_dir / volume_relpath(name)
        if not path.is_file() and missing != "keep":
            if missing == "error":
                raise FileNotFoundError(f"{path}: volume file not found (listed in {ds / REPORTS_CSV[split]})")
            continue
        if rel == "v1" and name not in meta:  # load_ct_volume refuses it, naming the metadata file
            log.warning("%s: no row for %s (v1 volumes need it for spacing and rescale)", meta_path, name)
        spacing, slope, inter = meta.get(name, (None, 1.0, 0.0))
        findings, impression = row["Findings_EN"], row["Impressions_EN"]
        lab = labels.get(name)
        if labels and lab is None:
            log.warning("%s: no row for %s; its labels are unknown", labels_path, name)
        records.append(CTRecord(
            volume_name=name, split=split, path=path,
            findings=report_text(findings, ""), impression=report_text("", impression),
            report=report_text(findings, impression), labels=lab, spacing_zyx=spacing,
            rescale_slope=slope, rescale_intercept=inter, release=rel,
        ))
    return records


def values_are_hu(values: np.ndarray, slope: float, intercept: float) -> bool:
    """Whether stored values are already HU (True) or still need ``values * slope + intercept``.

    A chest CT is mostly air and lung: in HU a large share of voxels lies in [-1200, -700] (lung,
    air outside the body). Both readings are scored by that share on a strided subsample and the
    larger wins; a tie (e.g. an identity rescale) counts as HU.

    Shape: values (D, H, W).
    """
    if slope == 1.0 and intercept == 0.0:
        return True
    sample = np.asarray(values[::4, ::4, ::4], dtype=np.float32)
    as_is = np.mean((sample >= -1200) & (sample <= -700))
    rescaled = sample * np.float32(slope) + np.float32(intercept)
    after = np.mean((rescaled >= -1200) & (rescaled <= -700))
    return bool(as_is >= after)


def resolve_ct_raw(record: CTRecord) -> RawVolume:
    """Read a record's volume as stored values with the spacing and rescale that make it HU.

    Spacing: the metadata's when given and the header disagrees (v1 headers), else the header's.
    Rescale: the metadata's only if :func:`values_are_hu` says the values are not HU yet (on top of
    any NIfTI ``scl_slope``/``scl_inter``, which nibabel's reader reports separately).
    """
    if record.release == "v1" and record.spacing_zyx is None:
        raise VolumeReadError(record.path, f"no metadata row for {record.volume_name} (v1 headers lack the spacing)")
    raw = read_nifti_raw(record.path)
    if raw.slope != 1.0 or raw.intercept != 0.0:
        # The header already makes the values HU; the metadata rescale must not be applied again.
        slope, intercept = raw.slope, raw.intercept
    elif values_are_hu(raw.values, record.rescale_slope, record.rescale_intercept):
        slope, intercept = 1.0, 0.0
    else:
        slope, intercept = record.rescale_slope, record.rescale_intercept
        log.debug("%s: stored values are not HU; applying slope %s intercept %s", record.path, slope, intercept)
    spacing = raw.spacing_zyx
    if record.spacing_zyx is not None and not np.allclose(spacing, record.spacing_zyx, rtol=0.02):
        log.debug("%s: header spacing %s replaced by metadata %s", record.path, spacing, record.spacing_zyx)
        spacing = tuple(float(s) for s in record.spacing_zyx)
        # Rebuild the affine with the metadata spacing (columns keep their directions).
        affine = raw.affine.copy()
        norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        affine[:3, :3] = affine[:3, :3] / np.where(norms > 0, norms, 1.0) * np.array(spacing[::-1])
        raw = RawVolume(raw.values, spacing, affine, raw.source, raw.slope, raw.intercept)
    return RawVolume(raw.values, spacing, raw.affine, raw.source, slope, intercept)


def load_ct_volume(record: CTRecord) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Load a record's volume in HU.

    Returns:
        (HU volume, spacing_zyx). Shape: (D, H, W) float32, RAS.

    Raises:
        VolumeReadError: missing or unreadable NIfTI (the message names the file).
    """
    if not Path(record.path).is_file():
        raise VolumeReadError(record.path, f"volume file not found (VolumeName {record.volume_name})")
    raw = resolve_ct_raw(record)
    return raw.hu(), raw.spacing_zyx
