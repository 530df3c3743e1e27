"""What ``predict`` reads and how it names it without leaking who the scan belongs to.

Input folders are often named after the patient (``DOE^JANE_12345/ACC-999``), so no output, file
name or default log line may carry the input path. Each scan gets a stable pseudonym instead:
``scan-`` + the first 12 hex digits of the SHA-256 of its DICOM ``SeriesInstanceUID`` (a DICOM folder or
file), of its content (a NIfTI / ``.npz`` file), or of its path (an input that cannot be read, so it
still gets a name). The pseudonym -> input mapping is written only where the user asks for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ctxray.data.dicom import read_series, scan_dicom_folder, select_series
from ctxray.data.readers import read_volume_raw
from ctxray.data.volume import RawVolume
from ctxray.utils.io import sha256_file

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npz")


def _is_dicom_file(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_dir(path: Path) -> bool:
    return any(p.is_file() and _is_dicom_file(p) for p in path.iterdir())


def discover_scans(inputs: Sequence[str | Path], max_depth: int = 4) -> list[Path]:
    """Expand the inputs into scans: NIfTI / ``.npz`` files and DICOM folders (one series each).

    A folder holding DICOM files is one scan; any other folder is searched (to ``max_depth``) for
    volume files and DICOM folders. Paths that do not exist are kept so they get an error entry.
    """
    scans: list[Path] = []

    def walk(p: Path, depth: int) -> None:
        if p.is_dir():
            if _is_dicom_dir(p):
                scans.append(p)
            elif depth < max_depth:
                for child in sorted(p.iterdir()):
                    if child.is_dir() or child.name.lower().endswith(VOLUME_SUFFIXES):
                        walk(child, depth + 1)
        else:
            scans.append(p)

    for item in inputs:
        walk(Path(item), 0)
    return scans


def _pseudonym(text: str) -> str:
    return "scan-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def open_scan(path: Path, series_uid: str | None = None) -> tuple[str, Callable[[], RawVolume]]:
    """The scan's pseudonym and a function that reads it (errors are raised when it is called).

    Args:
        path: a NIfTI / ``.npz`` file, a DICOM file or a DICOM folder.
        series_uid: for a DICOM folder with several CT series: a SeriesInstanceUID or its ``dcm-`` id.
    """
    path = Path(path)
    if path.is_dir() or (path.is_file() and _is_dicom_file(path)):
        series = scan_dicom_folder(path)
        if series:
            try:
                chosen = select_series(path, series, series_uid)
            except ValueError as err:  # several series, or only localizers (SkippedSeries): raised when read
                def fail(err: ValueError = err) -> RawVolume:
                    raise err
                return _pseudonym(str(path.resolve())), fail
            name = _pseudonym(chosen.uid)
            return name, lambda: read_series(chosen, name, min_slices=1 if path.is_file() else 3)
    elif path.is_file():
        return "scan-" + sha256_file(path)[:12], lambda: read_volume_raw(path)
    return _pseudonym(str(path.resolve())), lambda: read_volume_raw(path, series_uid=series_uid)


def scrub(text: str, path: Path) -> str:
    """``text`` without the input path or any of its folder names as a path component (``/name``), e.g. in an
    error message that quotes a slice file below a partly redacted folder."""
    full = path.absolute()
    for form in sorted({str(full), str(path), str(path.resolve())}, key=len, reverse=True):
        text = text.replace(form, "<input>")
    for part in sorted(set(full.parts[1:]) | set(path.resolve().parts[1:]), key=len, reverse=True):
        text = text.replace("/" + part, "/[path]")
    return text


class _ScrubFilter(logging.Filter):
    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage(), self.path), None
        return True


@contextlib.contextmanager
def scrubbed_logs(path: Path) -> Iterator[None]:
    """While reading ``path``, every log line that reaches the root logger's handlers goes through
    :func:`scrub` (a reader's message, a library's warning), so no log names the input."""
    handlers = list(logging.getLogger().handlers)
    filt = _ScrubFilter(path)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)
