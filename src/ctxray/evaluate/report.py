"""Writing evaluation outputs: ``metrics.json``, ``per_label.csv``, per-volume scores, ROC plots."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctxray.evaluate.protocol import METRICS
from ctxray.metrics import auroc_per_label, roc_points
from ctxray.utils.io import atomic_write, atomic_write_text

log = logging.getLogger(__name__)


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, NaN/inf to None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, data: Any) -> Path:
    """Strict JSON (NaN as null), indented, written atomically."""
    return atomic_write_text(Path(path), json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def per_label_rows(blocks: dict[str, dict]) -> list[dict[str, Any]]:
    """Flat rows (protocol, label, n, n_pos, threshold, metric, metric_lo, metric_hi ...) of metric blocks.

    Args:
        blocks: protocol name -> ``protocol.metric_block`` output.
    """
    rows = []
    for protocol, block in blocks.items():
        for name, entry in block["per_label"].items():
            row: dict[str, Any] = {"protocol": protocol, "label": name, "n": entry["n"], "n_pos": entry["n_pos"],
                                   "threshold": entry["threshold"]}
            for m in METRICS:
                lo, hi = entry[f"{m}_ci95"]
                row.update({m: entry[m], f"{m}_lo": lo, f"{m}_hi": hi})
            rows.append(row)
        row = {"protocol": protocol, "label": "MACRO", "n": block["n"], "n_pos": "", "threshold": ""}
        for m in METRICS:
            lo, hi = block["macro_ci95"][m]
            row.update({m: block["macro"][m], f"{m}_lo": lo, f"{m}_hi": hi})
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A CSV of dict rows (header from the first row; floats with 4 decimals, NaN as empty)."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")

    def fmt(v: Any) -> Any:
        if isinstance(v, float):
            return "" if not math.isfinite(v) else f"{v:.4f}"
        return v

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: fmt(v) for k, v in row.items()})
    return atomic_write_text(Path(path), buf.getvalue())


def score_rows(ids: Sequence[str], scan_ids: Sequence[str], names: Sequence[str], scores: np.ndarray,
               y: np.ndarray) -> list[dict[str, Any]]:
    """One row per volume: id, scan id, then ``score:<label>`` and ``label:<label>`` columns."""
    rows = []
    for i, (vid, sid) in enumerate(zip(ids, scan_ids)):
        row: dict[str, Any] = {"id": vid, "scan_id": sid}
        row.update({f"score:{n}": float(scores[i, j]) for j, n in enumerate(names)})
        row.update({f"label:{n}": float(y[i, j]) for j, n in enumerate(names)})
        rows.append(row)
    return rows


def plot_roc(path: Path, y: np.ndarray, scores: np.ndarray, names: Sequence[str], title: str) -> Path | None:
    """One PNG with a ROC curve (and its AUROC) per label that has both classes.

    Shape:
        y, scores: (N, L)

    Returns:
        The path written, or None when no label has both classes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    auc = auroc_per_label(y, scores)
    keep = [j for j in range(len(names)) if np.isfinite(auc[j])]
    if not keep:
        log.warning("%s: no label has both classes; no ROC plot", path)
        return None
    cols = min(6, len(keep))
    rows = math.ceil(len(keep) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, j in zip(axes.flat, keep):
        fpr, tpr, _ = roc_points(y[:, j], scores[:, j])
        ax.set_visible(True)
        ax.plot(fpr, tpr, lw=1.5)
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
        ax.set_title(f"{names[j]}\nAUROC {auc[j]:.3f}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{title} (macro AUROC {np.nanmean(auc):.3f})", fontsize=10)
    fig.supxlabel("false positive rate", fontsize=8)
    fig.supylabel("true positive rate", fontsize=8)
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)
