"""X-ray side of the world: radiographs of separate patients with short reports (MIMIC-CXR-like).

X-ray patients are drawn from the same label model as the CT patients but are different people.
Their phantoms carry every lesion (a coronary plaque is there on a radiograph too), but the
reports and label columns only name findings marked ``xray_visible`` in ``labels.json``; nodules
are drawn twice the CT size and at least 12 mm (median about 16 mm), so that a labelled nodule is one a
radiograph can show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctxray.labels import load_labels
from ctxray.synth.anatomy import Anatomy, sample_anatomy
from ctxray.synth.findings import build_lesions, sample_labels, visible_nodules
from ctxray.synth.lesions import Lesion
from ctxray.synth.presets import Findings, Preset
from ctxray.synth.render import render_xray
from ctxray.synth.reports import xray_report
from ctxray.synth.writers import write_png

XRAY_HEADER_PREFIX = ["id", "subject_id", "split", "image_path", "report"]
XRAY_CODE = 7


def xray_patient(seed: int, index: int, findings: Findings = "linked") -> tuple[Anatomy, dict[str, int],
                                                                                 list[Lesion]]:
    """Anatomy, all 18 labels and lesions of X-ray subject ``index`` (0-based)."""
    rng = np.random.default_rng([seed, XRAY_CODE, index])
    anatomy = visible_nodules(sample_anatomy(rng))
    labels, _age = sample_labels(rng, findings)
    return anatomy, labels, build_lesions(anatomy, labels, rng)


def xray_split(seed: int, index: int) -> str:
    u = np.random.default_rng([seed, XRAY_CODE + 1, index]).random()
    return "train" if u < 0.9 else "valid" if u < 0.95 else "test"


def write_xray_chunk(task: tuple[Path, Preset, int, int, int]) -> list[list[object]]:
    """Render and write radiographs ``start..stop-1``.

    Args:
        task: ``(xray_dir, preset, seed, start, stop)``.

    Returns:
        One ``reports.csv`` row per image: id, subject_id, split, image_path, report, 18 labels.
    """
    xray_dir, preset, seed, start, stop = task
    visible = set(load_labels().xray_visible_names)
    rows: list[list[object]] = []
    for i in range(start, stop):
        anatomy, labels, lesions = xray_patient(seed, i, preset.findings)
        img = render_xray(anatomy, lesions, preset.xray_size, preset.xray_render,
                          noise_seed=int(np.random.default_rng([seed, XRAY_CODE + 2, i]).integers(2**63)))
        xid = f"x{i + 1:06d}"
        write_png(xray_dir / "images" / f"{xid}.png", img)
        report = xray_report(lesions, labels, np.random.default_rng([seed, XRAY_CODE + 3, i]))
        xlabels = [int(labels[n]) if n in visible else 0 for n in load_labels().names]
        rows.append([xid, f"p{i + 1:06d}", xray_split(seed, i), f"images/{xid}.png", report, *xlabels])
    return rows
