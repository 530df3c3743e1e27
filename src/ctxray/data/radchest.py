"""RAD-ChestCT (Draelos et al. 2021): ``.npz`` volumes and abnormality labels.

Layout of a RAD-ChestCT folder (files may sit in subfolders)::

    Summary_3630.csv                               NoteAcc_DEID of the public volumes (trn*/val*/tst*)
    {NoteAcc_DEID}.npz                             key ``ct``: HU, 0.8 mm isotropic
    img{train,valid,test}_Abnormality_and_Location_Labels.csv   NoteAcc_DEID, ``{abnormality}*{location}``
    (or ``img*_Abnormality_Labels.csv`` with one column per abnormality)

Array orientation: axis 0 runs superior -> inferior, axis 1 anterior -> posterior, axis 2 the patient's
right -> left (the dataset's ``Extrema_35747.csv`` names its columns ``sup_axis0min``, ``ant_axis1min``,
``rig_axis2min``). All three axes are flipped to reach the RAS ``(D, H, W)`` convention.

Labels: the 84 abnormalities (a location-labelled column counts for its abnormality if any location is
1) are mapped to the 18 CT-RATE names with ``resources/radchest_to_ctrate.json``
(:mod:`ctxray.data.radchest_labels`); unmapped names are NaN.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from ctxray.data.nifti import read_npz_raw
from ctxray.data.radchest_labels import map_radchest_rows
from ctxray.data.volume import RAD_CHESTCT_SPACING_MM, RawVolume, VolumeReadError

log = logging.getLogger(__name__)

SUMMARY_CSV = "Summary_3630.csv"
ID_COLUMN = "NoteAcc_DEID"
_SPLITS = {"trn": "train", "val": "valid", "tst": "test"}


def radchest_split(note_id: str) -> str | None:
    """``trn00001`` -> ``train``, ``val...`` -> ``valid``, ``tst...`` -> ``test``; None otherwise."""
    return _SPLITS.get(note_id[:3].lower())


def read_radchest_raw(path: str | Path) -> RawVolume:
    """Read a RAD-ChestCT ``.npz`` (key ``ct``) onto the RAS ``(D, H, W)`` grid at 0.8 mm.

    Raises:
        VolumeReadError: naming the file and the reason.
    """
    raw = read_npz_raw(path, key="ct", spacing_zyx=(RAD_CHESTCT_SPACING_MM,) * 3)
    values = raw.values[::-1, ::-1, ::-1]  # (S->I, A->P, R->L) -> (I->S, P->A, L->R)
    return RawVolume(values, raw.spacing_zyx, raw.affine, raw.source, raw.slope, raw.intercept)


def _abnormality_rows(path: Path) -> list[dict[str, str]]:
    """Rows with one column per abnormality (``a*loc`` columns OR-ed into ``a``)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if ID_COLUMN not in columns:
            raise ValueError(f"{path}: missing column {ID_COLUMN!r}")
        rows = list(reader)
    groups: dict[str, list[str]] = {}
    for c in columns:
        if c != ID_COLUMN:
            groups.setdefault(c.split("*")[0], []).append(c)
    out = []
    for row in rows:
        agg = {ID_COLUMN: row[ID_COLUMN]}
        for name, cols in groups.items():
            try:
                agg[name] = "1" if any(float(row[c] or 0) >= 0.5 for c in cols) else "0"
            except ValueError:
                raise ValueError(f"{path}: {row[ID_COLUMN]}: non-numeric label in {cols}") from None
        out.append(agg)
    return out


def read_radchest_labels(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """All RAD-ChestCT label CSVs below ``folder``.

    Returns:
        (CT-RATE label vectors (18,) float32 with NaN for unmapped labels, positive RAD abnormality names),
        both keyed by NoteAcc_DEID. Empty if no label file is found.
    """
    mapped: dict[str, np.ndarray] = {}
    raw: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*Abnormality*Labels*.csv")):
        rows = _abnormality_rows(path)
        try:
            ids, labels = map_radchest_rows(rows)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        for i, row in enumerate(rows):
            mapped[ids[i]] = labels[i]
            raw[ids[i]] = sorted(k for k, v in row.items() if k != ID_COLUMN and v == "1")
    return mapped, raw


def list_radchest(folder: str | Path) -> list[tuple[str, Path | None]]:
    """``(NoteAcc_DEID, npz path or None if absent)`` for every volume of the summary CSV.

    Without ``Summary_3630.csv`` every ``*.npz`` below ``folder`` is listed.
    """
    folder = Path(folder)
    files = {p.stem: p for p in folder.rglob("*.npz")}
    summary = next(iter(sorted(folder.rglob(SUMMARY_CSV))), None)
    if summary is None:
        return sorted(files.items())
    with open(summary, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if ID_COLUMN not in (reader.fieldnames or []):
            raise ValueError(f"{summary}: missing column {ID_COLUMN!r}; found {reader.fieldnames}")
        ids = [row[ID_COLUMN].strip() for row in reader]
    return [(i, files.get(i)) for i in ids]


def is_radchest_folder(folder: Path) -> bool:
    return folder.is_dir() and (any(folder.rglob(SUMMARY_CSV)) or any(folder.rglob("*.npz")))


def missing_volume_error(folder: Path, note_id: str) -> VolumeReadError:
    return VolumeReadError(folder / f"{note_id}.npz", f"volume file not found (listed in {SUMMARY_CSV})")
