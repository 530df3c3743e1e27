"""Reading the CSV files users bring (reports, labels, metadata) whatever their text encoding.

Hospital exports are rarely clean UTF-8: Excel writes UTF-8 with a BOM or UTF-16, older systems
cp1252/latin-1, and a file assembled from several sources may mix them row by row. :func:`decode_csv`
detects the encoding from the BOM (UTF-8, UTF-16), else reads UTF-8 and falls back to cp1252 (then
latin-1) only for the lines that are not UTF-8, warning with the file and line numbers, so one odd row
never costs the whole file.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _decode_line(line: bytes) -> str | None:
    """A line as UTF-8, or None when it is not valid UTF-8."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _legacy(line: bytes) -> str:
    try:
        return line.decode("cp1252")
    except UnicodeDecodeError:  # the 5 bytes cp1252 leaves undefined
        return line.decode("latin-1")


def _looks_utf16(data: bytes) -> str | None:
    """``utf-16-le``/``-be`` for BOM-less UTF-16 text (NULs in every other byte), else None."""
    head = data[:4096]
    if len(head) < 4 or head.count(0) < len(head) // 4:
        return None
    odd, even = head[1::2].count(0), head[0::2].count(0)
    return "utf-16-le" if odd > 2 * even else "utf-16-be" if even > 2 * odd else None


def decode_csv(path: str | Path) -> str:
    """The text of a CSV file, its encoding detected (see the module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a UTF-16 file that does not decode (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or _looks_utf16(data):
        encoding = "utf-16" if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else _looks_utf16(data)
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: looks like UTF-16 but does not decode ({err})") from None
        log.info("%s: read as %s", path, encoding)
        return text.lstrip("\ufeff")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    lines, legacy = [], []
    for n, line in enumerate(data.split(b"\n"), start=1):
        text = _decode_line(line)
        if text is None:
            text = _legacy(line)
            legacy.append(n)
        lines.append(text)
    shown = ", ".join(map(str, legacy[:10])) + (" ..." if len(legacy) > 10 else "")
    log.warning("%s: %d line(s) are not UTF-8 (line %s); read them as cp1252/latin-1: check their accents",
                path, len(legacy), shown)
    return "\n".join(lines)


def read_csv_records(path: str | Path, required: tuple[str, ...] = ()) -> tuple[list[str], list[tuple[int, dict]]]:
    """Columns and ``(line number, row)`` pairs of a CSV (line numbers count from 1 with the header).

    Raises:
        FileNotFoundError / ValueError: naming the file (missing file, missing columns).
    """
    reader = csv.DictReader(io.StringIO(decode_csv(path), newline=""))
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    missing = [c for c in required if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {columns}")
    records = []
    start = reader.line_num + 1
    for row in reader:
        records.append((start, row))
        start = reader.line_num + 1
    return columns, records
