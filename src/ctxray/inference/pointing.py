"""The pointing game: does a finding's relevance map peak on the lesion?

For each true positive (label present in the ground truth and decided positive by the model) the
map's maximum (argmax voxel; ties go to the first in C order) is a hit when its distance in mm to the
centre of any lesion of that label is at most ``lesion radius + margin_mm`` (the lesion radius is half
its largest size in mm, 0 when unknown). The random-point baseline is the expected hit rate of a
point drawn uniformly from the volume's voxels under the same rule, estimated with ``n_random``
draws per case; it is the chance level the map must beat. A second, harder baseline draws the point
from the body only (the largest connected region above -500 HU, holes filled), since lesions never
lie in the air around the patient.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

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
        body_points: optional (N, 3) voxels drawn uniformly inside the body, for ``body_baseline``.
    """

    volume: str
    label: str
    peak_zyx: tuple[int, int, int]
    lesions: Sequence[Lesion]
    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    body_points: np.ndarray | None = None


@dataclass
class PointingResult:
    """Per-label outcome: hits among true positives, and the random-point baselines.

    ``baseline`` draws points uniformly from the whole volume; ``body_baseline`` (when the cases carry
    ``body_points``) from the voxels inside the body, a harder chance level.
    """

    label: str
    n: int = 0
    hits: int = 0
    baseline: float = 0.0
    body_baseline: float = math.nan
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
    body: dict[str, list[float]] = {}
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
        if case.body_points is not None and len(case.body_points):
            pts = np.asarray(case.body_points, dtype=np.float64)
            body.setdefault(case.label, []).append(float(_hits(pts, case.lesions, spacing, margin_mm).mean()))
    for label, res in results.items():
        res.baseline = sums[label] / res.n
        if len(body.get(label, [])) == res.n:
            res.body_baseline = float(np.mean(body[label]))
    return results


def format_table(results: dict[str, PointingResult], margin_mm: float) -> str:
    """A Markdown table of the results, labels in the given order, plus an overall row."""
    lines = ["| label | cases | hits | pointing accuracy | random point, volume | random point, body |",
             "|---|---:|---:|---:|---:|---:|"]
    n = hits = 0
    base = body = 0.0
    for res in results.values():
        lines.append(f"| {res.label} | {res.n} | {res.hits} | {res.rate:.3f} | {res.baseline:.3f} | "
                     f"{res.body_baseline:.3f} |")
        n, hits = n + res.n, hits + res.hits
        base, body = base + res.baseline * res.n, body + res.body_baseline * res.n
    if n:
        lines.append(f"| **all** | {n} | {hits} | {hits / n:.3f} | {base / n:.3f} | {body / n:.3f} |")
    lines.append(f"(hit: map maximum within lesion radius + {margin_mm:g} mm of a lesion centre)")
    return "\n".join(lines)


def read_ground_truth(world: str | Path, split: str | None = None) -> tuple[list[dict], dict[str, Path]]:
    """The synthetic world's ground truth rows and the path of each volume.

    Args:
        world: the world folder (``ctxray synth --out W``).
        split: keep only rows of this split (``train`` / ``valid``); None keeps all.

    Returns:
        (rows of ``W/ct-rate/ground_truth.jsonl``, volume name without ``.nii.gz`` -> NIfTI path).
    """
    root = Path(world) / "ct-rate"
    gt = root / "ground_truth.jsonl"
    if not gt.is_file():
        raise FileNotFoundError(f"{gt}: not found; is {world} a world written by ctxray synth?")
    rows = [json.loads(line) for line in gt.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if split is None or r.get("split") == split]
    paths = {_stem(p.name): p for p in (root / "dataset").rglob("*.nii.gz")}
    missing = [r["VolumeName"] for r in rows if _stem(r["VolumeName"]) not in paths]
    if missing:
        raise FileNotFoundError(f"{root / 'dataset'}: {len(missing)} volume(s) of {gt.name} not found, "
                                f"e.g. {missing[0]}")
    return rows, paths


def _stem(name: str) -> str:
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name


def collect_cases(model, rows: Iterable[dict], paths: dict[str, Path], require_decision: bool = True,
                  seed: int = 0) -> tuple[list[PointingCase], dict[str, dict[str, int]]]:
    """Relevance-map peaks for each localised true positive of the ground truth.

    Args:
        model: a loaded ``CTModel``.
        rows: ground-truth rows (``read_ground_truth``).
        paths: volume name (without ``.nii.gz``) -> volume file.
        require_decision: count only labels the model decides positive (true positives); False takes
            every ground-truth positive (the map is then judged even where the model said no).
        seed: RNG seed of the body points (the body baseline's draws, 2000 per volume).

    Returns:
        (cases, per-label counts ``{"gt_pos", "tp", "tp_localised"}``).
    """
    from ctxray.utils.progress import progress

    rows = list(rows)
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {n: {"gt_pos": 0, "tp": 0, "tp_localised": 0} for n in model.labels}
    cases: list[PointingCase] = []
    for row in progress(rows, total=len(rows), desc="pointing game", unit="vol"):
        name, body_points = row["VolumeName"], None
        vol = model.read(paths[_stem(name)])
        x = model.preprocess(vol)
        findings = {f.label: f for f in model.findings_from_embedding(model.embed_input(x)[0])}
        for label, present in row["labels"].items():
            if not present or label not in counts:
                continue
            counts[label]["gt_pos"] += 1
            if require_decision and not findings[label].decision:
                continue
            counts[label]["tp"] += 1
            lesions = [Lesion(label, tuple(les["center_zyx_vox"]), lesion_radius_mm(les.get("size_mm")))
                       for les in row.get("lesions", []) if les.get("label") == label]
            if not lesions:
                continue
            counts[label]["tp_localised"] += 1
            heat, _ = model.explain_input(x, label, vol.hu.shape, vol.spacing_zyx)
            if body_points is None:
                body_points = _body_sample(vol.hu, rng)
            cases.append(PointingCase(name, label, map_peak(heat), lesions, tuple(vol.hu.shape),
                                      tuple(vol.spacing_zyx), body_points))
    return cases, counts


def _body_sample(hu: np.ndarray, rng: np.random.Generator, n: int = 2000, threshold_hu: float = -500.0) -> np.ndarray:
    """Voxels drawn uniformly from the body: the largest connected region above ``threshold_hu``, filled."""
    from scipy import ndimage

    mask = hu > threshold_hu
    lab, k = ndimage.label(mask)
    if k == 0:
        return np.argwhere(np.ones_like(mask))[rng.integers(0, mask.size, n)]
    largest = 1 + int(np.argmax(ndimage.sum(mask, lab, index=range(1, k + 1))))
    body = ndimage.binary_fill_holes(lab == largest)  # lungs inside the chest wall belong to the body
    idx = np.flatnonzero(body)
    return np.stack(np.unravel_index(rng.choice(idx, size=n), hu.shape), axis=1)
