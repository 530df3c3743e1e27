"""``ctxray predict``: a model folder on one scan, a DICOM folder, or a folder of scans.

Each scan is named by a pseudonym (``scan-`` + 12 hex digits, :mod:`ctxray.inference.scans`): no output,
folder name or default log line carries the input path, which may hold patient identifiers; the
pseudonym -> input mapping is written only with ``write_mapping``. Each volume passes the checks of
``preprocess`` (:mod:`ctxray.data.validate`) and a chest field-of-view check (:mod:`ctxray.inference.fov`)
whose warnings go into ``findings.json``, ``summary.json`` and the HTML.

For each scan ``OUT/<scan>/`` gets ``findings.json`` (label, probability, threshold, decision),
``report.txt``, ``embedding.npy`` (E,), ``heatmaps/<label>.nii.gz`` (relevance maps on the input's grid
with the input's affine) and ``report.html`` (self-contained). ``OUT/summary.json`` lists every scan
with its status; a scan that cannot be read or processed gets an error entry with the reason (also in
``OUT/errors.log``) and the batch goes on.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ctxray.data.dicom import SkippedSeries
from ctxray.data.validate import validate_raw
from ctxray.data.volume import RawVolume
from ctxray.inference.api import CTModel, Finding, NoDecoderError
from ctxray.inference.card import limits_section
from ctxray.inference.fov import chest_fov_check
from ctxray.inference.heatmap import method_spec
from ctxray.inference.html import ReportPage, write_report_html
from ctxray.inference.report import report_source
from ctxray.inference.scans import discover_scans, open_scan, scrub, scrubbed_logs
from ctxray.utils.io import atomic_write, atomic_write_text, json_safe, make_readable
from ctxray.utils.progress import progress

log = logging.getLogger(__name__)

__all__ = ["ScanResult", "discover_scans", "predict", "predict_scan", "unique_name"]

ExplainMode = Literal["positive", "all", "none"]


def unique_name(pseudonym: str, taken: set[str]) -> str:
    """``pseudonym``, suffixed ``_2``, ``_3``... when the same scan is given twice."""
    name, k = pseudonym, 2
    while name in taken:
        name, k = f"{pseudonym}_{k}", k + 1
    taken.add(name)
    return name


def label_slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


@dataclass
class ScanResult:
    """What predict produced for one scan (``error`` set when it failed, or why it was skipped: a folder of
    localizers only; ``warnings`` from the field-of-view check).

    ``input`` stays in memory for the caller; it is never written to ``summary.json``.
    """

    input: str
    name: str
    status: Literal["ok", "error", "skipped"]
    error: str | None = None
    findings: list[dict] | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The summary entry: everything but the input path."""
        return {"scan": self.name, "status": self.status, "error": self.error, "warnings": self.warnings,
                "findings": self.findings, "seconds": round(self.seconds, 3)}


def _dumps(obj) -> str:
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def _write_nifti(path: Path, map_zyx: np.ndarray, affine: np.ndarray) -> None:
    """A [0, 1] map as NIfTI: uint8 with scale slope 1/255 (readers see floats; 4x smaller than float32)."""
    import nibabel as nib

    q = np.rint(np.clip(map_zyx, 0.0, 1.0) * 255.0).astype(np.uint8)
    img = nib.Nifti1Image(np.ascontiguousarray(q.transpose(2, 1, 0)), affine)
    img.header.set_slope_inter(1.0 / 255.0, 0.0)
    atomic_write(path, lambda p: nib.save(img, str(p)))


def _report_text(model: CTModel, x, findings: list[Finding]) -> tuple[str, str]:
    """The generated report and a line on its source; a missing or failing decoder is stated, not fatal."""
    positives = [f.label for f in findings if f.decision]
    listed = ", ".join(positives) if positives else "none"
    try:
        text = model.generate_from_input(x)
        return text, report_source(model.decoder_dir)
    except NoDecoderError as err:
        return (f"No generated report: {err}.\nZero-shot findings above threshold: {listed}.",
                "no report decoder in this model folder; the text only restates the findings table")
    except Exception as err:  # noqa: BLE001 - the findings stay useful when the decoder fails
        log.warning("report generation failed: %s: %s", type(err).__name__, err)
        return (f"No generated report: the report decoder failed ({type(err).__name__}: {err}).\n"
                f"Zero-shot findings above threshold: {listed}.", "report decoder failed; see the log")


def predict_scan(model: CTModel, read: Callable[[], RawVolume], name: str, out_dir: Path,
                 explain: ExplainMode = "positive", html: bool = True,
                 max_voxels: int = 4_000_000, explain_method: str = "gradcam",
                 explain_unvalidated: bool = False) -> tuple[list[dict], list[str]]:
    """Run the model on one scan and write its outputs.

    Args:
        read: reads the scan (from :func:`ctxray.inference.scans.open_scan`).
        name: the scan's pseudonym (the only name any output carries).

    Returns:
        (the findings rows, the field-of-view warnings).

    Raises:
        Whatever reading, validation or the model raises; :func:`predict` turns it into an error entry.
    """
    raw = read()
    validate_raw(raw, name)
    vol = raw.to_volume()
    fov = chest_fov_check(vol.hu, vol.spacing_zyx)
    x = model.preprocess(vol)
    emb = model.embed_input(x)[0]
    findings = model.findings_from_embedding(emb)
    if not all(np.isfinite(f.probability) for f in findings):
        raise ValueError("the model gave non-finite probabilities for this scan; no findings reported")
    rows = [f.to_dict() for f in findings]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "embedding.npy", lambda p: np.save(p, emb.numpy().astype(np.float32)))
    targets = {"positive": [f.label for f in findings if f.decision], "all": model.labels, "none": []}[explain]
    validated = set(model.validated_labels(explain_method))
    skipped = [t for t in targets if t not in validated] if not explain_unvalidated else []
    targets = [t for t in targets if t not in skipped]
    maps: dict[str, np.ndarray] = {}
    method = ""
    for label in targets:
        maps[label], method = model.explain_input(x, label, vol.hu.shape, vol.spacing_zyx, method=explain_method)
        _write_nifti(out_dir / "heatmaps" / f"{label_slug(label)}.nii.gz", maps[label], vol.affine)
    for row in rows:
        row["heatmap"] = f"heatmaps/{label_slug(row['label'])}.nii.gz" if row["label"] in maps else None
    report, source = _report_text(model, x, findings)
    if fov.warnings:
        report = "WARNING: " + " ".join(fov.warnings) + "\n\n" + report
    atomic_write_text(out_dir / "report.txt", report + "\n")
    doc = {"scan": name, "shape_zyx": list(vol.hu.shape), "spacing_zyx": list(vol.spacing_zyx),
           "field_of_view": fov.to_dict(), "warnings": fov.warnings, "heatmap_method": method or None,
           "heatmaps_not_drawn_unvalidated": skipped, "findings": rows}
    atomic_write_text(out_dir / "findings.json", _dumps(doc))
    if html:
        page = ReportPage(scan=name, hu=vol.hu, spacing_zyx=vol.spacing_zyx, findings=rows, maps=maps,
                          report=report, report_source=source, limits=limits_section(model.card),
                          method=_legend(method, maps, skipped, validated), warnings=fov.warnings,
                          provenance=f"Input: {name} (pseudonym). Model: {model.info.get('encoder')} "
                          f"(ctxray {model.info.get('ctxray_version')}, exported {model.info.get('created')}).")
        write_report_html(out_dir / "report.html", page, max_voxels=max_voxels)
    return rows, fov.warnings


def _legend(method: str, maps: dict, skipped: list[str], validated: set[str]) -> str:
    """The HTML's account of the heatmaps: how they were made and which labels' localisation was validated."""
    parts = [f"Heatmaps: {method}" if maps else "No heatmaps."]
    parts.append("Localisation validated by the pointing benchmark for: " + (", ".join(sorted(validated)) or "no label")
                 + " (see the model card).")
    if skipped:
        parts.append("Not drawn, localisation never validated: " + ", ".join(skipped)
                     + " (--explain-unvalidated draws them).")
    return " ".join(parts)


def _predict_one(model: CTModel, path: Path, out: Path, taken: set[str], series_uid: str | None,
                 errors: list[str], **kw) -> ScanResult:
    """One scan of :func:`predict`: its outputs, or an error entry (appended to ``errors``) with the reason."""
    start = time.perf_counter()
    pseudonym, read = open_scan(path, series_uid)
    name = unique_name(pseudonym, taken)
    try:
        rows, warnings = predict_scan(model, read, name, out / name, **kw)
        make_readable(out / name)
        for w in warnings:
            log.warning("%s: %s", name, w)
        return ScanResult(str(path), name, "ok", findings=rows, seconds=time.perf_counter() - start, warnings=warnings)
    except SkippedSeries as err:  # a folder of localizers only: not a failure
        log.info("%s: skipped: %s", name, err)
        return ScanResult(str(path), name, "skipped", error=f"skipped: {err}", seconds=time.perf_counter() - start)
    except Exception as err:  # noqa: BLE001 - one bad scan must not stop the batch
        reason = scrub(f"{type(err).__name__}: {err}", path)
        log.error("%s: %s", name, reason)
        errors.append(f"{name}\t{reason}")
        return ScanResult(str(path), name, "error", error=reason, seconds=time.perf_counter() - start)


def predict(model: CTModel, inputs: Sequence[str | Path], out: str | Path, explain: ExplainMode = "positive",
            html: bool = True, max_voxels: int = 4_000_000, series_uid: str | None = None,
            write_mapping: str | Path | None = None, explain_method: str = "gradcam",
            explain_unvalidated: bool = False) -> list[ScanResult]:
    """Run the model on every scan found in ``inputs``, writing ``out/<pseudonym>/...`` and ``out/summary.json``.

    Args:
        model: a loaded model folder (``ctxray.load``).
        inputs: NIfTI / ``.npz`` files, DICOM folders, or folders of those.
        out: output folder.
        explain: relevance maps for positive findings, all labels, or none; of those, only labels whose maps
            the model folder's ``localisation.json`` validated for ``explain_method``, unless ``explain_unvalidated``.
        explain_method: ``gradcam``, ``hirescam``, ``occlusion``, ``rollout`` or ``gradrollout``, optionally with
            an option (``occlusion:blur``, ``occlusion:4x8x8``, ``hirescam:1``; ``heatmap.method_spec``);
            it is also the key of the validated labels in ``localisation.json``.
        explain_unvalidated: also draw maps of labels whose localisation was never validated (marked so).
        html: write ``report.html`` per scan.
        max_voxels: display-grid budget of the HTML viewer.
        series_uid: the series to read from a DICOM folder holding several CT series (UID or ``dcm-`` id).
        write_mapping: a TSV file to write ``pseudonym<TAB>input path`` to (nothing is written without it).

    Returns:
        One :class:`ScanResult` per scan, in input order.
    """
    method_spec(explain_method)  # an unknown method fails here, not once per scan
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scans = discover_scans(inputs)
    if not scans:
        raise ValueError(f"no scans found in the {len(inputs)} input(s) given")
    taken: set[str] = set()
    results: list[ScanResult] = []
    errors: list[str] = []
    for path in progress(scans, total=len(scans), desc="predict", unit="scan"):
        with scrubbed_logs(path):
            results.append(_predict_one(model, path, out, taken, series_uid, errors, explain=explain, html=html,
                                        max_voxels=max_voxels, explain_method=explain_method,
                                        explain_unvalidated=explain_unvalidated))
    summary = {"model": model.info, "scans": [r.to_dict() for r in results],
               "n_ok": sum(r.status == "ok" for r in results), "n_error": len(errors),
               "n_skipped": sum(r.status == "skipped" for r in results),
               "n_warning": sum(bool(r.warnings) for r in results)}
    atomic_write_text(out / "summary.json", _dumps(summary))
    atomic_write_text(out / "errors.log", "".join(e + "\n" for e in errors))
    make_readable(out / "summary.json")
    make_readable(out / "errors.log")
    if write_mapping is not None:
        atomic_write_text(Path(write_mapping), "scan\tinput\n" + "".join(f"{r.name}\t{r.input}\n" for r in results))
        log.info("pseudonym -> input mapping written to the file given with --write-mapping")
    log.info("predict: %d scan(s) ok (%d with field-of-view warnings), %d error(s)", summary["n_ok"],
             summary["n_warning"], len(errors))
    return results
