"""RAD-ChestCT labels mapped onto CT-RATE names (``resources/radchest_to_ctrate.json``).

16 of the 18 CT-RATE labels are evaluated on RAD-ChestCT: the 15 of the public mapping used by HLIP
(``calcification`` feeds both calcification labels; no Medical material, no Mosaic attenuation) plus
Lymphadenopathy, which RAD-ChestCT labels under the same name. Unmapped labels are NaN (unknown) and
so left out of every metric and of the macro averages.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ctxray.labels import LabelSet, load_labels


@dataclass(frozen=True)
class RadChestMapping:
    """CT-RATE name -> RAD-ChestCT columns (a label is positive if any of them is)."""

    mapping: dict[str, tuple[str, ...]]
    unmapped: dict[str, str]
    id_column: str
    source: str

    @property
    def source_columns(self) -> list[str]:
        return sorted({c for cols in self.mapping.values() for c in cols})


def load_radchest_mapping(path: str | Path | None = None, label_set: LabelSet | None = None) -> RadChestMapping:
    """Read and check a mapping file (the packaged one by default).

    Raises:
        ValueError: if a target name is not a label of ``label_set``, or a label is both mapped and
            unmapped, or neither.
    """
    if path is None:
        source = "ctxray/resources/radchest_to_ctrate.json"
        data = json.loads(resources.files("ctxray").joinpath("resources/radchest_to_ctrate.json").read_text())
    else:
        source = str(path)
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read RAD-ChestCT mapping: {err}") from err
    label_set = label_set or load_labels()
    try:
        mapping = {k: tuple(v) for k, v in data["mapping"].items()}
        unmapped = dict(data.get("unmapped", {}))
        id_column = str(data.get("id_column", "NoteAcc_DEID"))
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{source}: malformed RAD-ChestCT mapping: {err}") from err
    unknown = [n for n in list(mapping) + list(unmapped) if n not in label_set.names]
    if unknown:
        raise ValueError(f"{source}: not CT-RATE label names: {unknown}")
    both = set(mapping) & set(unmapped)
    if both:
        raise ValueError(f"{source}: labels both mapped and unmapped: {sorted(both)}")
    neither = [n for n in label_set.names if n not in mapping and n not in unmapped]
    if neither:
        raise ValueError(f"{source}: labels neither mapped nor listed as unmapped: {neither}")
    return RadChestMapping(mapping, unmapped, id_column, source)


def map_radchest_rows(rows: list[dict[str, str]], mapping: RadChestMapping | None = None,
                      label_set: LabelSet | None = None) -> tuple[list[str], np.ndarray]:
    """Turn RAD-ChestCT label rows into CT-RATE label vectors.

    Args:
        rows: dicts of one RAD-ChestCT label CSV (values "0"/"1"/"0.0"/"1.0").
        mapping: the mapping (packaged one by default).
        label_set: the target label order (packaged CT-RATE labels by default).

    Returns:
        (ids, labels): labels float32 with 0/1 for mapped labels and NaN for unmapped ones.

    Shape:
        labels: (len(rows), L)
    """
    label_set = label_set or load_labels()
    mapping = mapping or load_radchest_mapping(label_set=label_set)
    if rows:
        missing = [c for c in mapping.source_columns + [mapping.id_column] if c not in rows[0]]
        if missing:
            raise ValueError(f"RAD-ChestCT label rows lack columns {missing} ({mapping.source})")
    out = np.full((len(rows), len(label_set)), np.nan, dtype=np.float32)
    for j, name in enumerate(label_set.names):
        cols = mapping.mapping.get(name)
        if not cols:
            continue
        for i, row in enumerate(rows):
            out[i, j] = float(any(float(row[c]) >= 0.5 for c in cols))
    return [row[mapping.id_column] for row in rows], out


def read_radchest_label_csv(csv_path: str | Path, mapping: RadChestMapping | None = None,
                         label_set: LabelSet | None = None) -> tuple[list[str], np.ndarray]:
    """``map_radchest_rows`` over a RAD-ChestCT label CSV file (errors name the file)."""
    path = Path(csv_path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise ValueError(f"{path}: cannot read RAD-ChestCT labels: {err}") from err
    try:
        return map_radchest_rows(rows, mapping, label_set)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
