"""Reading a preprocess cache folder (``ctxray preprocess --out C``): the one reader every stage uses.

Layout (written by :mod:`ctxray.data.cache`; see ``docs/architecture.md``)::

    C/spec.json         the PreprocessSpec every array was made with
    C/manifest.jsonl    one JSON object per volume, sorted by id (``id, split, file, report, labels, scan_id``...)
    C/volumes/{id}.npy  the arrays (a row's ``file`` is its path relative to C)
    C/errors.log        one line per input that failed
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxray.data.spec import PreprocessSpec

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.jsonl"
VOLUMES_DIR = "volumes"
ERRORS_LOG = "errors.log"


def manifest_path(cache_dir: str | Path) -> Path:
    """``C/manifest.jsonl``, or the file itself when given a ``.jsonl`` path."""
    path = Path(cache_dir)
    return path if path.suffix == ".jsonl" else path / MANIFEST_FILE


def read_manifest(cache_dir: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of ``C/manifest.jsonl`` (optionally one split), in file order.

    Raises:
        FileNotFoundError: no manifest (names it). ValueError: a line that is not a JSON object with an ``id``
            (names the file and line).
    """
    path = manifest_path(cache_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is {path.parent} a preprocess cache? (run `ctxray "
                                "preprocess` first, or --merge shards)")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                str(row["id"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: bad manifest line: {err}") from err
            if split is None or row.get("split") == split:
                rows.append(row)
    return rows


def read_spec(cache_dir: str | Path) -> PreprocessSpec:
    """The cache's ``spec.json``."""
    return PreprocessSpec.load(Path(cache_dir) / SPEC_FILE)


def spec_path(cache_dir: str | Path) -> Path:
    """Where the cache's spec lives (``C/spec.json``)."""
    return Path(cache_dir) / SPEC_FILE


def volume_path(cache_dir: str | Path, row: dict[str, Any]) -> Path:
    """The cached array of a manifest row: its ``file`` (relative to the cache); a row without one (a hand-written
    or older manifest) names ``volumes/{id}.npy``."""
    return Path(cache_dir) / (row.get("file") or f"{VOLUMES_DIR}/{row['id']}.npy")


def scan_ids(rows: list[dict[str, Any]], where: str | Path = "manifest") -> dict[str, str]:
    """Volume id -> scan id of manifest rows (a volume without ``scan_id`` is its own scan, logged)."""
    out: dict[str, str] = {}
    missing = 0
    for row in rows:
        vid, sid = str(row["id"]), row.get("scan_id")
        missing += sid is None
        out[vid] = str(sid) if sid is not None else vid
    if missing:
        log.warning("%s: %d volumes have no scan_id; each counts as its own scan", where, missing)
    return out


def read_scan_ids(cache_dir: str | Path) -> dict[str, str]:
    """Volume id -> scan id of every volume of a cache (:func:`scan_ids` over :func:`read_manifest`)."""
    return scan_ids(read_manifest(cache_dir), manifest_path(cache_dir))


@dataclass(frozen=True)
class CacheIndex:
    """A cache's spec and manifest rows, read once (a stage that needs several splits reads the folder once).

    Args:
        root: the cache folder. spec: its ``spec.json``. rows: every manifest row, in file order.
    """

    root: Path
    spec: PreprocessSpec
    rows: tuple[dict[str, Any], ...]

    def split(self, name: str | None) -> list[dict[str, Any]]:
        """The rows of one split (all rows for None), in file order."""
        return [r for r in self.rows if name is None or r.get("split") == name]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (D, H, W) of every cached volume."""
        return tuple(self.spec.shape_zyx)  # type: ignore[return-value]


def read_cache(cache_dir: str | Path) -> CacheIndex:
    """Read a cache folder's manifest and spec once (errors as :func:`read_manifest`, then the spec's)."""
    rows = read_manifest(cache_dir)
    return CacheIndex(Path(cache_dir), read_spec(cache_dir), tuple(rows))
