"""The X-ray gallery: a MIMIC-CXR-like folder of frontal radiographs with reports and labels.

Layout (written by ``ctxray synth``; a real gallery converted to it works the same)::

    xray_dir/reports.csv      id, subject_id, split, image_path, report, <one 0/1 column per label>
    xray_dir/images/{id}.png  8-bit grayscale frontal projection (patient's right on image left)

``image_path`` is relative to ``xray_dir``. Label columns follow ``labels.json``; a missing label
column is an error, because a silently all-zero label would corrupt every agreement figure.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxray.data.text import clean_field
from ctxray.labels import LabelSet, load_labels

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("id", "subject_id", "split", "image_path", "report")


@dataclass(frozen=True)
class XrayRecord:
    """One gallery X-ray.

    Args:
        id: unique image id.
        subject_id: patient id (several images may share one).
        split: "train", "valid" or "test" (as written in the CSV).
        image_path: absolute path of the image file.
        report: cleaned report text.
        labels: float32 (L,) in label-set order (0/1).
    """

    id: str
    subject_id: str
    split: str
    image_path: Path
    report: str
    labels: np.ndarray


def _parse_label(value: str, where: str) -> float:
    try:
        x = float(value)
    except ValueError as err:
        raise ValueError(f"{where}: label value {value!r} is not a number") from err
    if x not in (0.0, 1.0):
        raise ValueError(f"{where}: label value {value!r} is not 0 or 1")
    return x


def read_xray_gallery(xray_dir: str | Path, split: str | None = None,
                      label_set: LabelSet | None = None) -> list[XrayRecord]:
    """Read ``reports.csv`` of an X-ray gallery.

    Args:
        xray_dir: the gallery folder (holding ``reports.csv``), or a world folder with ``xray/``.
        split: keep only this split; None keeps all.
        label_set: the label columns to read; None reads the packaged 18 labels.

    Returns:
        Records in CSV order.

    Raises:
        FileNotFoundError: no ``reports.csv``. ValueError: a missing column, a duplicate id or a bad
        label value (the message names the file and row).
    """
    root = Path(xray_dir)
    if not (root / "reports.csv").is_file() and (root / "xray" / "reports.csv").is_file():
        root = root / "xray"  # a world folder W was given
    path = root / "reports.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: X-ray gallery table not found (expected {root}/reports.csv)")
    names = (label_set or load_labels()).names
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in (*REQUIRED_COLUMNS, *names) if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}")
        records: list[XrayRecord] = []
        seen: set[str] = set()
        for row_no, row in enumerate(reader, start=2):
            where = f"{path}:{row_no}"
            if row["id"] in seen:
                raise ValueError(f"{where}: duplicate id {row['id']!r}")
            seen.add(row["id"])
            if split is not None and row["split"] != split:
                continue
            labels = np.array([_parse_label(row[n], f"{where} column {n!r}") for n in names], dtype=np.float32)
            records.append(XrayRecord(
                id=row["id"], subject_id=row["subject_id"], split=row["split"],
                image_path=root / row["image_path"], report=clean_field(row["report"]), labels=labels,
            ))
    log.info("read %d X-ray records from %s%s", len(records), path, f" (split {split})" if split else "")
    return records


def load_xray_image(path: str | Path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Load a grayscale radiograph as float32 in [0, 1].

    Args:
        path: an 8- or 16-bit image file (PNG, JPEG, TIFF).
        size: output (H, W) or one int for a square; None keeps the file's size. Resized bilinearly.

    Returns:
        Shape: (1, H, W) float32 in [0, 1].

    Raises:
        ValueError: the file cannot be read as an image (the message names it).
    """
    from PIL import Image

    p = Path(path)
    try:
        with Image.open(p) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
                img = Image.fromarray(arr, mode="F")
            else:
                img = im.convert("F")
                arr = None
    except (OSError, ValueError) as err:
        raise ValueError(f"{p}: cannot read image: {err}") from err
    scale = 1.0 if arr is not None else 255.0
    if size is not None:
        h, w = (size, size) if isinstance(size, int) else size
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
    out = np.asarray(img, dtype=np.float32) / scale
    return np.clip(out, 0.0, 1.0)[None]
