"""The pointing game: does a finding's relevance map peak on the lesion?

For each true positive (label present in the ground truth and decided positive by the model) the
map's maximum (argmax voxel; ties go to the first in C order) is a hit when its distance in mm to the
centre of any lesion of that label is at most ``lesion radius + margin_mm`` (the lesion radius is half
its largest size in mm, 0 when unknown). The random-point baseline is the expected hit rate of a
point drawn uniformly from the volume's voxels under the same rule, estimated with ``n_random``
draws per case; it is the chance level the map must beat.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Lesion:
    """A lesion of one label: centre in voxels of the (D, H, W) RAS array and radius in mm."""

    label: str
    center_zyx: tuple[float, float, float]
    radius_mm: float = 0.0


@dataclass
class PointingCase:
    """One true positive: the map's peak and the lesions of its label in that volume.

    Args:
        volume: the volume's name.
        label: the finding.
        peak_zyx: argmax voxel of the relevance map.
        lesions: lesions of ``label`` in the volume (at least one).
        shape: (D, H, W) of the map (for the random baseline).
        spacing_zyx: voxel size in mm.
    """

    volume: str
    label: str
    peak_zyx: tuple[int, int, int]
    lesions: Sequence[Lesion]
    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]


@dataclass
class PointingResult:
    """Per-label outcome: hits among true positives, and the random-point baseline."""

    label: str
    n: int = 0
    hits: int = 0
    baseline: float = 0.0
    volumes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.hits / self.n if self.n else math.nan


def map_peak(map_: np.ndarray) -> tuple[int, int, int]:
    """Argmax voxel (D, H, W index) of a map; NaNs are ignored."""
    arr = np.nan_to_num(np.asarray(map_, dtype=np.float32), nan=-np.inf)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(arr)), arr.shape))


def lesion_radius_mm(size_mm: object) -> float:
    """Half the largest extent from a ground-truth ``size_mm`` (a number or a list); 0 when absent."""
    if size_mm is None:
        return 0.0
    values = np.atleast_1d(np.asarray(size_mm, dtype=np.float64))
    return float(np.nanmax(values)) / 2.0 if values.size else 0.0


def _hits(points_zyx: np.ndarray, lesions: Sequence[Lesion], spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """Boolean hit per point (N, 3) voxel coordinates."""
    hit = np.zeros(len(points_zyx), dtype=bool)
    for lesion in lesions:
        d = np.linalg.norm((points_zyx - np.asarray(lesion.center_zyx)) * spacing, axis=1)
        hit |= d <= lesion.radius_mm + margin_mm
    return hit


def pointing_game(cases: Iterable[PointingCase], margin_mm: float, n_random: int = 2000,
                  seed: int = 0) -> dict[str, PointingResult]:
    """Per-label pointing-game hit rates and random-point baselines.

    Args:
        cases: one per true positive with localised lesions.
        margin_mm: tolerance added to the lesion radius.
        n_random: uniform random points per case for the baseline.
        seed: RNG seed for the baseline.

    Returns:
        label -> :class:`PointingResult` (``baseline`` is the mean random hit rate over its cases).
    """
    rng = np.random.default_rng(seed)
    results: dict[str, PointingResult] = {}
    sums: dict[str, float] = {}
    for case in cases:
        if not case.lesions:
            raise ValueError(f"{case.volume}: pointing case for {case.label!r} has no lesion")
        res = results.setdefault(case.label, PointingResult(case.label))
        spacing = np.asarray(case.spacing_zyx, dtype=np.float64)
        res.n += 1
        res.volumes.append(case.volume)
        res.hits += int(_hits(np.asarray([case.peak_zyx], float), case.lesions, spacing, margin_mm)[0])
        pts = rng.integers(0, np.asarray(case.shape), size=(n_random, 3)).astype(np.float64)
        sums[case.label] = sums.get(case.label, 0.0) + float(_hits(pts, case.lesions, spacing, margin_mm).mean())
    for label, res in results.items():
        res.baseline = sums[label] / res.n
    return results


def format_table(results: dict[str, PointingResult], margin_mm: float) -> str:
    """A Markdown table of the results, labels in the given order, plus an overall row."""
    lines = [f"| label | true positives | hits | pointing accuracy | random-point baseline (margin {margin_mm:g} mm) |",
             "|---|---:|---:|---:|---:|"]
    n = hits = 0
    base = 0.0
    for res in results.values():
        lines.append(f"| {res.label} | {res.n} | {res.hits} | {res.rate:.3f} | {res.baseline:.3f} |")
        n, hits, base = n + res.n, hits + res.hits, base + res.baseline * res.n
    if n:
        lines.append(f"| **all** | {n} | {hits} | {hits / n:.3f} | {base / n:.3f} |")
    return "\n".join(lines)
