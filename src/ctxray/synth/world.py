"""Write a whole synthetic world: CT-RATE-layout CT set, ground truth, X-ray gallery, world.json.

Every scan and every radiograph draws from its own random stream, keyed by (seed, kind, index),
so the output is the same byte for byte whatever the number of worker processes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxray import __version__
from ctxray.labels import load_labels
from ctxray.synth.presets import Preset, get_preset
from ctxray.synth.scans import CT_SPLITS, plan_scans, write_scan
from ctxray.synth.writers import write_csv
from ctxray.synth.xray_gallery import XRAY_HEADER_PREFIX, write_xray_chunk
from ctxray.utils.io import atomic_write_text
from ctxray.utils.progress import progress

log = logging.getLogger(__name__)

REPORT_COLUMNS = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]
METADATA_COLUMNS = ["VolumeName", "Manufacturer", "PatientSex", "PatientAge", "ReconstructionDiameter",
                    "ConvolutionKernel", "SliceThickness", "XYSpacing", "ZSpacing", "RescaleIntercept",
                    "RescaleSlope", "NumberofSlices", "Rows", "Columns", "ImagePositionPatient",
                    "ImageOrientationPatient"]
XRAY_CHUNK = 50


@dataclass(frozen=True)
class _Files:
    """CT-RATE file names for one split (they are irregular: "valid" vs "validation")."""

    folder: str
    reports: str
    labels: str
    metadata: str


FILES = {
    "train": _Files("train_fixed", "train_reports.csv", "train_predicted_labels.csv", "train_metadata.csv"),
    "valid": _Files("valid_fixed", "validation_reports.csv", "valid_predicted_labels.csv",
                    "validation_metadata.csv"),
}


def _run(fn: Callable, tasks: list, workers: int, desc: str, unit: str) -> Iterator:
    """Map ``fn`` over ``tasks`` in order, in worker processes when ``workers > 1``, with progress."""
    if workers <= 1:
        yield from progress((fn(t) for t in tasks), total=len(tasks), desc=desc, unit=unit)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from progress(pool.map(fn, tasks, chunksize=1), total=len(tasks), desc=desc, unit=unit)


def _write_ct(out: Path, preset: Preset, seed: int, workers: int) -> dict:
    ds = out / "ct-rate" / "dataset"
    names = load_labels().names
    gt_lines: list[str] = []
    counts: dict[str, int] = {}
    for split in CT_SPLITS:
        tasks = plan_scans(preset, seed, split, ds / FILES[split].folder)
        reports, labels, meta = [], [], []
        for vols in _run(write_scan, tasks, workers, f"CT {split}", "scan"):
            for v in vols:
                reports.append([v["VolumeName"], *v["report_fields"]])
                labels.append([v["VolumeName"], *(v["labels"][n] for n in names)])
                meta.append([v["metadata"][c] for c in METADATA_COLUMNS])
                gt = {k: v[k] for k in ("VolumeName", "split", "scan_id", "labels", "lesions", "age", "sex")}
                gt_lines.append(json.dumps(gt, sort_keys=False))
        f = FILES[split]
        write_csv(ds / "radiology_text_reports" / f.reports, REPORT_COLUMNS, reports)
        write_csv(ds / "multi_abnormality_labels" / f.labels, ["VolumeName", *names], labels)
        write_csv(ds / "metadata" / f.metadata, METADATA_COLUMNS, meta)
        counts[f"ct_{split}"] = len(reports)
        counts[f"ct_{split}_patients"] = len({t.patient for t in tasks})
        counts[f"ct_{split}_scans"] = len(tasks)
    atomic_write_text(out / "ct-rate" / "ground_truth.jsonl", "\n".join(gt_lines) + "\n")
    return counts


def _write_xray(out: Path, preset: Preset, seed: int, workers: int) -> dict:
    names = load_labels().names
    starts = list(range(0, preset.n_xray, XRAY_CHUNK))
    tasks = [(out / "xray", preset, seed, s, min(s + XRAY_CHUNK, preset.n_xray)) for s in starts]
    rows: list[list[object]] = []
    for chunk in _run(write_xray_chunk, tasks, workers, "X-ray", "chunk"):
        rows.extend(chunk)
    write_csv(out / "xray" / "reports.csv", [*XRAY_HEADER_PREFIX, *names], rows)
    return {"xray": len(rows), "xray_positive_rate": _positive_rates(np.array([r[5:] for r in rows], float), names)}


def _positive_rates(matrix: np.ndarray, names: list[str]) -> dict[str, float]:
    return {n: round(float(matrix[:, i].mean()), 3) for i, n in enumerate(names)} if len(matrix) else {}


def default_workers(preset: str) -> int:
    """Processes used when none are asked for: one for ``tiny`` (tests), else the CPUs (at most 8)."""
    return 1 if preset == "tiny" else max(1, min(os.cpu_count() or 1, 8))


def generate_world(out: Path, preset: str = "tiny", seed: int = 0, workers: int | None = None) -> dict:
    """Write the synthetic chest world under ``out`` (layout: docs/architecture.md, "synth -> everything").

    Args:
        out: output folder (created; existing files of a previous world are overwritten).
        preset: a name of :data:`ctxray.synth.presets.PRESETS` ("tiny", "smoke", "demo", ...).
        seed: world seed; the same seed gives the same bytes.
        workers: processes rendering in parallel; None for :func:`default_workers`. The output does
            not depend on it.

    Returns:
        The content of ``out/world.json`` (preset, seed, counts, shapes, spacing, version, timings).
    """
    p = get_preset(preset)
    workers = default_workers(p.name) if workers is None else workers
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    counts = _write_ct(out, p, seed, workers)
    t1 = time.perf_counter()
    xray = _write_xray(out, p, seed, workers)
    t2 = time.perf_counter()
    info = {
        "preset": p.name, "seed": seed, "software": f"ctxray {__version__}",
        "counts": {**counts, "xray": xray["xray"]},
        "ct_shape_zyx": list(p.ct_shape), "ct_spacing_zyx": list(p.ct_spacing),
        "xray_size": p.xray_size, "labels": load_labels().names,
        "xray_positive_rate": xray["xray_positive_rate"],
    }
    atomic_write_text(out / "world.json", json.dumps(info, indent=2) + "\n")
    log.info("synthetic world %s (seed %d) in %s: %s; CT %.1f s, X-ray %.1f s", p.name, seed, out, info["counts"],
             t1 - t0, t2 - t1)
    return info
