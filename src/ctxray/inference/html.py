"""One self-contained HTML file per scan: three slice views, window presets, finding heatmaps.

The page is ``resources/viewer.html`` with one JSON block filled in: the volume (on a display grid of
at most ``max_voxels`` voxels) as base64 little-endian int16 Hounsfield units, each relevance map as
base64 uint8 on a grid of at most ``max_voxels / 8`` voxels covering the same field of view, the
findings table, the report text and the model card's limits. The page fetches nothing (its
Content-Security-Policy forbids it) and inserts all text with ``textContent``, so report text cannot
inject markup.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from ctxray.utils.io import atomic_write_text

log = logging.getLogger(__name__)

# (level, width) in HU. Lung and mediastinum as commonly used for chest CT; bone a wide window.
WINDOW_PRESETS: dict[str, tuple[int, int]] = {
    "lung": (-600, 1500),
    "mediastinum": (50, 350),
    "bone": (400, 1800),
}
_PLACEHOLDER = "__CTXRAY_DATA__"


@dataclass
class ReportPage:
    """What one HTML report shows.

    Args:
        scan: the scan's name (title).
        hu: the input volume in HU on its own grid.
        spacing_zyx: its voxel spacing in mm.
        findings: rows with ``label, probability, threshold, decision``.
        maps: label -> relevance map in [0, 1] on the same grid as ``hu``.
        report: the generated report (or the statement why there is none).
        report_source: one line on where ``report`` comes from.
        limits: the model card's limits section.
        method: how the heatmaps were computed.
        provenance: model, software version, the scan's pseudonym.
        warnings: shown above the page's banner (e.g. the scan does not look like a chest CT).

    Shape:
        hu and every map: (D, H, W) of a RAS+ volume.
    """

    scan: str
    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    findings: Sequence[Mapping]
    maps: Mapping[str, np.ndarray] = field(default_factory=dict)
    report: str = ""
    report_source: str = ""
    limits: str = ""
    method: str = ""
    provenance: str = ""
    warnings: Sequence[str] = ()


def display_grid(shape: Sequence[int], max_voxels: int) -> tuple[int, int, int]:
    """The shape of the display grid: the input shape scaled down uniformly to at most ``max_voxels``."""
    n = float(np.prod(shape))
    if n <= max_voxels:
        return tuple(int(s) for s in shape)
    f = (max_voxels / n) ** (1.0 / 3.0)
    return tuple(max(1, int(s * f)) for s in shape)


def _resize(arr: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    if tuple(arr.shape) == shape:
        return arr.astype(np.float32, copy=False)
    from scipy.ndimage import zoom

    factors = [t / s for t, s in zip(shape, arr.shape)]
    out = zoom(arr.astype(np.float32, copy=False), factors, order=1, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1], : shape[2]]


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def page_data(page: ReportPage, max_voxels: int = 4_000_000) -> dict:
    """The JSON-ready content of the page's data block (the volume resampled for display).

    Raises:
        ValueError: if a map's shape differs from the volume's.
    """
    if page.hu.ndim != 3:
        raise ValueError(f"{page.scan}: volume must be (D, H, W), got shape {page.hu.shape}")
    shape = display_grid(page.hu.shape, max_voxels)
    scale = np.array(page.hu.shape, float) / np.array(shape, float)
    spacing = [float(s) for s in np.asarray(page.spacing_zyx, float) * scale]
    hu = np.clip(np.rint(_resize(page.hu, shape)), -32768, 32767).astype("<i2")
    # relevance maps are smooth: half the display resolution per axis (an eighth of the bytes)
    overlay_shape = display_grid(page.hu.shape, max(1, max_voxels // 8))
    overlays = []
    for label, m in page.maps.items():
        if m.shape != page.hu.shape:
            raise ValueError(f"{page.scan}: map for {label!r} has shape {m.shape}, volume {page.hu.shape}")
        m = np.nan_to_num(_resize(m, overlay_shape), nan=0.0)
        top = float(m.max())
        m8 = np.rint(255 * np.clip(m / top if top > 0 else m, 0, 1)).astype(np.uint8)
        overlays.append({"label": label, "data": _b64(m8)})
    findings = [
        {"label": str(f["label"]), "probability": float(f["probability"]),
         "threshold": float(f["threshold"]), "decision": bool(f["decision"])}
        for f in page.findings
    ]
    n_pos = sum(f["decision"] for f in findings)
    return {
        "scan": page.scan,
        "subtitle": f"{n_pos} of {len(findings)} findings above threshold; "
        f"volume {tuple(page.hu.shape)} voxels at {tuple(round(float(s), 3) for s in page.spacing_zyx)} mm "
        f"(z, y, x), shown on {shape}",
        "banner": "".join(f"WARNING: {w} " for w in page.warnings)
        + "Research use only. Not a medical device. Not for diagnosis or treatment decisions.",
        "shape": list(shape),
        "spacing": spacing,
        "volume": _b64(hu),
        "overlays": overlays,
        "overlay_shape": list(overlay_shape),
        "findings": findings,
        "windows": {k: list(v) for k, v in WINDOW_PRESETS.items()},
        "default_window": "lung",
        "report": page.report,
        "report_source": page.report_source,
        "limits": page.limits,
        "method": page.method,
        "provenance": page.provenance,
    }


def render_html(page: ReportPage, max_voxels: int = 4_000_000) -> str:
    """The complete HTML text of the report page."""
    template = resources.files("ctxray").joinpath("resources/viewer.html").read_text()
    if template.count(_PLACEHOLDER) != 1:
        raise RuntimeError("ctxray/resources/viewer.html: expected exactly one data placeholder")
    # JSON inside <script>: escape '<' so no '</script>' or '<!--' can end the block early.
    blob = json.dumps(page_data(page, max_voxels), separators=(",", ":")).replace("<", "\\u003c")
    return template.replace(_PLACEHOLDER, blob)


def write_report_html(path: str | Path, page: ReportPage, max_voxels: int = 4_000_000) -> Path:
    """Write the report page atomically; returns its path."""
    path = Path(path)
    atomic_write_text(path, render_html(page, max_voxels))
    log.debug("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
