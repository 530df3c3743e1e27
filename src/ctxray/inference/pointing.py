"""The pointing game: does a finding's relevance map point at the lesion?

For each true positive (label present in the ground truth and decided positive by the model) the map's
point is the centroid of its top voxels inside the body (``map_point``: the largest-mass connected
region of the voxels at or above the top ``top_fraction`` quantile of the body's values; a tie-free
rule, where a first-in-C-order argmax lands on the corner of every flat plateau). It is a hit when its
distance in mm to the centre of any lesion of that label is at most ``lesion radius + margin_mm`` (the
lesion radius is half its largest size in mm, 0 when unknown). The same sphere (radius + margin) is the
"dilated lesion mask" of the energy measure: the share of the map's sum inside it. Lesions that are not
balls carry a :class:`Region` in the ground truth (pericardial fluid: a shell around the heart; a pleural
effusion: a posterior layer of the lung's width); for them the region dilated by the margin replaces the
sphere.

Chance levels: a point drawn uniformly from the volume (``baseline``) or from the body (the largest
connected region above -500 HU, holes filled; ``body_baseline``), under the same rule. They are also
the energy-inside-mask of a uniform map over the volume and over the body. ``best_possible``: the share
of cases where some cell centre of the grid the map was computed on (a feature grid, mapped back onto
the scan) is a hit: what a map with one hot cell on that grid could reach at best.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ctxray.inference.heatmap import invert_map
from ctxray.utils.progress import progress


@dataclass
class Region:
    """Where a lesion that is not a ball lies: an ellipsoid, optionally cut by a plane or hollowed out.

    The synthetic world records one for shells and layers (``region`` in ``ground_truth.jsonl``): pericardial
    fluid is the shell between the heart (``inner_radii_mm``) and the heart plus the fluid's thickness, a
    pleural effusion the part of an ellipsoid behind a coronal plane. Dilated by a margin m, the region is
    the ellipsoid with semi-axes + m (which contains the exact m-neighbourhood), the plane moved out by m and
    the hollow shrunk by m.

    Args:
        offset_mm: (z, y, x) centre of the ellipsoid relative to the lesion's centre.
        radii_mm: (rz, ry, rx) semi-axes.
        rot: rotation about z in radians (``ctxray.synth.canvas.Ellipsoid``'s convention).
        inner_radii_mm: semi-axes of a hollow about the same centre, if any.
        plane: ``(normal_zyx, offset)``: only points ``q`` (mm from the ellipsoid's centre) with
            ``normal . q <= offset`` belong to it.
    """

    offset_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    rot: float = 0.0
    inner_radii_mm: tuple[float, float, float] | None = None
    plane: tuple[tuple[float, float, float], float] | None = None

    @classmethod
    def from_record(cls, rec: dict | None) -> Region | None:
        if not rec:
            return None
        plane = rec.get("plane")
        return cls(tuple(rec.get("offset_mm", (0.0, 0.0, 0.0))), tuple(rec["radii_mm"]), float(rec.get("rot", 0.0)),
                   tuple(rec["inner_radii_mm"]) if rec.get("inner_radii_mm") else None,
                   (tuple(plane[0]), float(plane[1])) if plane else None)

    def contains(self, q_mm: np.ndarray, margin_mm: float) -> np.ndarray:
        """Which points lie in the region dilated by ``margin_mm``. Shape: q_mm (N, 3) mm from the lesion's
        centre -> (N,) bool."""
        q = np.asarray(q_mm, dtype=np.float64) - np.asarray(self.offset_mm)
        c, s = np.cos(self.rot), np.sin(self.rot)
        z, y, x = q[:, 0], q[:, 1], q[:, 2]
        xr, yr = c * x + s * y, -s * x + c * y

        def inside(radii, grow):
            rz, ry, rx = (max(v + grow, 1e-9) for v in radii)
            return (z / rz) ** 2 + (yr / ry) ** 2 + (xr / rx) ** 2 <= 1.0

        ok = inside(self.radii_mm, margin_mm)
        if self.plane is not None:
            normal = np.asarray(self.plane[0], dtype=np.float64)
            ok &= q @ (normal / np.linalg.norm(normal)) <= self.plane[1] + margin_mm
        if self.inner_radii_mm is not None and min(self.inner_radii_mm) > margin_mm:
            ok &= ~inside(self.inner_radii_mm, -margin_mm)
        return ok


@dataclass
class Lesion:
    """A lesion of one label: centre in voxels of the (D, H, W) RAS array and radius in mm.

    Without a ``region`` the lesion is the ball of ``radius_mm`` about its centre; with one, the region.
    """

    label: str
    center_zyx: tuple[float, float, float]
    radius_mm: float = 0.0
    region: Region | None = None

    def contains(self, points_zyx: np.ndarray, spacing_zyx: Sequence[float], margin_mm: float) -> np.ndarray:
        """Which voxel points (N, 3) lie in the lesion dilated by ``margin_mm``. Shape: -> (N,) bool."""
        q = (np.asarray(points_zyx, dtype=np.float64) - np.asarray(self.center_zyx)) * np.asarray(spacing_zyx)
        if self.region is not None:
            return self.region.contains(q, margin_mm)
        return np.linalg.norm(q, axis=1) <= self.radius_mm + margin_mm


@dataclass
class PointingCase:
    """One true positive: the map's peak and the lesions of its label in that volume.

    Args:
        volume: the volume's name.
        label: the finding.
        peak_zyx: the map's point (voxel coordinates, may be fractional; :func:`map_point`).
        lesions: lesions of ``label`` in the volume (at least one).
        shape: (D, H, W) of the map (for the random baseline).
        spacing_zyx: voxel size in mm.
        body_points: optional (N, 3) voxels drawn uniformly inside the body, for ``body_baseline``.
        energy: share of the map inside the dilated lesion masks (NaN when not measured).
        grid_points: optional (M, 3) cell centres of the map's grid on the scan, for ``best_possible``.
    """

    volume: str
    label: str
    peak_zyx: tuple[float, float, float]
    lesions: Sequence[Lesion]
    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    body_points: np.ndarray | None = None
    energy: float = math.nan
    grid_points: np.ndarray | None = None


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
    energy: float = math.nan
    best_possible: float = math.nan
    volumes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.hits / self.n if self.n else math.nan


def map_peak(map_: np.ndarray) -> tuple[int, int, int]:
    """Argmax voxel (D, H, W index) of a map; NaNs are ignored; ties go to the first (see :func:`map_point`)."""
    arr = np.nan_to_num(np.asarray(map_, dtype=np.float32), nan=-np.inf)
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(arr)), arr.shape))


def map_point(map_: np.ndarray, mask: np.ndarray | None = None, top_fraction: float = 0.005
              ) -> tuple[float, float, float]:
    """Where a map points: the value-weighted centroid of its top voxels inside ``mask``.

    The top voxels are those at or above the ``1 - top_fraction`` quantile of the map inside the mask
    (at least the maximum); of their 26-connected regions the one with the largest summed value is kept.
    A flat plateau gives its centre, not its first corner.

    Args:
        map_: relevance map; NaNs are ignored. Shape: (D, H, W).
        mask: where the point may lie (e.g. the body); None or an empty mask: everywhere.
        top_fraction: share of the mask's voxels taken as top voxels.

    Returns:
        (z, y, x) voxel coordinates (fractional).
    """
    from scipy import ndimage

    arr = np.nan_to_num(np.asarray(map_, dtype=np.float64), nan=-np.inf)
    inside = np.ones(arr.shape, bool) if mask is None or not np.any(mask) else np.asarray(mask, bool)
    values = arr[inside]
    sel = inside & (arr >= float(np.quantile(values, 1.0 - min(max(top_fraction, 0.0), 1.0))))
    lab, k = ndimage.label(sel, structure=np.ones((3, 3, 3)))
    weights = np.where(sel, arr - float(values.min()) + 1e-12, 0.0)
    if k > 1:
        sums = ndimage.sum(weights, lab, index=range(1, k + 1))
        sel = lab == 1 + int(np.argmax(sums))
    idx = np.argwhere(sel).astype(np.float64)
    w = weights[sel]
    return tuple(float(v) for v in (idx * w[:, None]).sum(0) / w.sum())  # type: ignore[return-value]


def lesion_energy(map_: np.ndarray, lesions: Sequence[Lesion], spacing_zyx: Sequence[float], margin_mm: float) -> float:
    """Share of a non-negative map's sum inside the lesions dilated by ``margin_mm`` (:meth:`Lesion.contains`)."""
    arr = np.clip(np.nan_to_num(np.asarray(map_, dtype=np.float64)), 0, None)
    total = arr.sum()
    if total <= 0:
        return 0.0
    points = np.indices(arr.shape).reshape(3, -1).T  # (N, 3)
    inside = np.zeros(len(points), bool)
    for lesion in lesions:
        inside |= lesion.contains(points, spacing_zyx, margin_mm)
    return float(arr.reshape(-1)[inside].sum() / total)


def grid_centres(spec, grid: Sequence[int], shape: Sequence[int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """Centres of the cells of a ``grid`` covering the model input's field of view, in scan voxels.

    Args:
        spec: the ``PreprocessSpec`` that made the model input.
        grid: (d, h, w) of the map's grid.
        shape, spacing_zyx: the scan's grid.

    Shape:
        output: (d * h * w, 3) float (z, y, x) voxel coordinates of the scan.
    """
    origin, s_out = spec.output_grid(tuple(shape), tuple(spacing_zyx))
    n_out = np.asarray(spec.shape_zyx, dtype=np.float64)
    axes = []
    for a in range(3):
        cell = n_out[a] / grid[a]  # model voxels per cell
        idx = (np.arange(grid[a]) + 0.5) * cell - 0.5  # model voxel coordinate of the cell centre
        axes.append((origin[a] + idx * s_out[a]) / float(spacing_zyx[a]))
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def lesion_radius_mm(size_mm: object) -> float:
    """Half the largest extent from a ground-truth ``size_mm`` (a number or a list); 0 when absent."""
    if size_mm is None:
        return 0.0
    values = np.atleast_1d(np.asarray(size_mm, dtype=np.float64))
    return float(np.nanmax(values)) / 2.0 if values.size else 0.0


def lesions_of(row: dict, label: str) -> list[Lesion]:
    """The localised lesions of ``label`` in one ground-truth row (``ground_truth.jsonl``)."""
    return [Lesion(label, tuple(les["center_zyx_vox"]), lesion_radius_mm(les.get("size_mm")),
                   Region.from_record(les.get("region")))
            for les in row.get("lesions", []) if les.get("label") == label]


def cell_targets(row: dict, labels: Sequence[str], spec, grid: Sequence[int], shape: Sequence[int],
                 spacing_zyx: Sequence[float], margin_mm: float = 0.0,
                 localised: Collection[str] | None = None) -> np.ndarray:
    """Where each label's lesions lie on a model's feature grid: the per-cell targets of a localising model.

    A cell is 1 for a label when its centre (on the scan, :func:`grid_centres`) lies in one of the label's
    lesions dilated by ``margin_mm`` (:meth:`Lesion.contains`, the pointing game's hit rule) or when it is the
    cell nearest a ball lesion's centre (a lesion smaller than a cell still marks one); every other cell is 0.
    A label the row marks absent is 0 everywhere; one it marks present without a localised lesion (a diffuse
    finding, or one the world does not place) is NaN everywhere (unknown where), and so is every label outside
    ``localised`` when it is given (e.g. :data:`FOCAL`: diffuse findings such as emphysema carry one nominal
    centre in the ground truth, which is not where they are).

    Args:
        row: one ground-truth row (``labels`` and ``lesions``).
        labels: the model's labels, in its order.
        spec: the ``PreprocessSpec`` that made the model input; grid: the map's (d, h, w).
        shape, spacing_zyx: the scan's grid (the ground truth's voxel coordinates are on it).

    Shape:
        output: (len(labels), d, h, w) float32
    """
    centres = grid_centres(spec, grid, shape, spacing_zyx)
    spacing = np.asarray(spacing_zyx, dtype=np.float64)
    out = np.zeros((len(labels), len(centres)), dtype=np.float32)
    for j, label in enumerate(labels):
        if localised is not None and label not in localised:
            out[j] = np.nan
            continue
        if not row.get("labels", {}).get(label):
            continue
        lesions = lesions_of(row, label)
        if not lesions:
            out[j] = np.nan
            continue
        hit = _hits(centres, lesions, spacing, margin_mm)
        for lesion in lesions:
            if lesion.region is None:
                hit[np.argmin(np.linalg.norm((centres - np.asarray(lesion.center_zyx)) * spacing, axis=1))] = True
        out[j] = hit
    return out.reshape(len(labels), *grid)


def _hits(points_zyx: np.ndarray, lesions: Sequence[Lesion], spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """Boolean hit per point (N, 3) voxel coordinates."""
    hit = np.zeros(len(points_zyx), dtype=bool)
    for lesion in lesions:
        hit |= lesion.contains(points_zyx, spacing, margin_mm)
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
    extra: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        if not case.lesions:
            raise ValueError(f"{case.volume}: pointing case for {case.label!r} has no lesion")
        res = results.setdefault(case.label, PointingResult(case.label))
        spacing = np.asarray(case.spacing_zyx, dtype=np.float64)
        res.n += 1
        res.volumes.append(case.volume)
        res.hits += int(_hits(np.asarray([case.peak_zyx], float), case.lesions, spacing, margin_mm)[0])
        more = extra.setdefault(case.label, {"energy": [], "best": []})
        more["energy"].append(case.energy)
        if case.grid_points is not None:
            more["best"].append(float(_hits(np.asarray(case.grid_points, float), case.lesions, spacing,
                                            margin_mm).any()))
        pts = rng.integers(0, np.asarray(case.shape), size=(n_random, 3)).astype(np.float64)
        sums[case.label] = sums.get(case.label, 0.0) + float(_hits(pts, case.lesions, spacing, margin_mm).mean())
        if case.body_points is not None and len(case.body_points):
            pts = np.asarray(case.body_points, dtype=np.float64)
            body.setdefault(case.label, []).append(float(_hits(pts, case.lesions, spacing, margin_mm).mean()))
    for label, res in results.items():
        res.baseline = sums[label] / res.n
        if len(body.get(label, [])) == res.n:
            res.body_baseline = float(np.mean(body[label]))
        res.energy = float(np.mean(extra[label]["energy"]))
        if len(extra[label]["best"]) == res.n:
            res.best_possible = float(np.mean(extra[label]["best"]))
    return results


def format_table(results: dict[str, PointingResult], margin_mm: float) -> str:
    """A Markdown table of the results, labels in the given order, plus an overall (case-weighted) row."""
    lines = ["| label | cases | hits | pointing accuracy | best possible on the grid | energy in mask | "
             "random point, volume | random point, body |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    n = hits = 0
    sums = np.zeros(4)
    for res in results.values():
        lines.append(f"| {res.label} | {res.n} | {res.hits} | {res.rate:.3f} | {res.best_possible:.3f} | "
                     f"{res.energy:.3f} | {res.baseline:.3f} | {res.body_baseline:.3f} |")
        n, hits = n + res.n, hits + res.hits
        sums += res.n * np.array([res.best_possible, res.energy, res.baseline, res.body_baseline])
    if n:
        best, energy, base, body = sums / n
        lines.append(f"| **all** | {n} | {hits} | {hits / n:.3f} | {best:.3f} | {energy:.3f} | {base:.3f} | "
                     f"{body:.3f} |")
    lines.append(f"(hit: the map's point within lesion radius + {margin_mm:g} mm of a lesion centre, or within "
                 f"{margin_mm:g} mm of the recorded region of a shell or layer (pericardial, pleural fluid); energy: "
                 "share of the map in those dilated lesions, whose chance levels are the two random-point columns)")
    return "\n".join(lines)


def format_matrix(by_method: dict[str, dict[str, PointingResult]], labels: Sequence[str]) -> str:
    """Pointing accuracy per label (rows) and method (columns), with each method's best possible in
    brackets and the two chance levels (computed on the first method's cases)."""
    methods = list(by_method)
    lines = ["| label | n | " + " | ".join(f"{m} (best possible)" for m in methods)
             + " | random, volume | random, body |", "|---|---:|" + "---:|" * (len(methods) + 2)]
    for label in labels:
        first = by_method[methods[0]].get(label)
        if first is None or not first.n:
            continue
        cells = []
        for m in methods:
            r = by_method[m].get(label)
            cells.append(f"{r.rate:.2f} ({r.best_possible:.2f})" if r else "-")
        lines.append(f"| {label} | {first.n} | " + " | ".join(cells)
                     + f" | {first.baseline:.3f} | {first.body_baseline:.3f} |")
    for name, subset in (("focal findings", FOCAL), ("all labels", labels)):
        first = pooled(by_method[methods[0]], subset)
        if first.n:
            cells = [f"{pooled(by_method[m], subset).rate:.2f} ({pooled(by_method[m], subset).best_possible:.2f})"
                     for m in methods]
            lines.append(f"| **{name}** | {first.n} | " + " | ".join(cells)
                         + f" | {first.baseline:.3f} | {first.body_baseline:.3f} |")
    return "\n".join(lines)


FOCAL = ("Lung nodule", "Lung opacity", "Consolidation", "Pleural effusion", "Pericardial effusion", "Hiatal hernia")
"""The focal findings of issue 14's goal (pointing accuracy >= 0.6 with the supervised reference)."""


def pooled(results: dict[str, PointingResult], labels: Sequence[str]) -> PointingResult:
    """The case-weighted pool of ``labels``' results (hits summed; best possible and chance levels averaged
    over cases)."""
    out = PointingResult("pooled")
    rows = [results[k] for k in labels if k in results and results[k].n]
    if not rows:
        return out
    out.n, out.hits = sum(r.n for r in rows), sum(r.hits for r in rows)
    for name in ("best_possible", "energy", "baseline", "body_baseline"):
        setattr(out, name, float(sum(r.n * getattr(r, name) for r in rows) / out.n))
    return out


def format_comparison(by_subject: dict[str, dict[str, dict[str, PointingResult]]], labels: Sequence[str],
                      focal: Sequence[str] = FOCAL) -> str:
    """Pointing accuracy per label of several models side by side (each on its own true positives).

    Args:
        by_subject: model name -> method -> label -> result.
        labels: row order.
        focal: labels pooled into the "focal findings" row.

    Returns:
        A Markdown table: per model its cases, each method's accuracy (best possible on its grid) and the
        random-body-point chance level; rows per label, the focal findings pooled, all labels pooled.
    """
    head, rule = ["label"], ["---"]
    for subject, methods in by_subject.items():
        head += [f"{subject}: n"] + [f"{subject}: {m}" for m in methods] + [f"{subject}: random, body"]
        rule += ["---:"] * (len(methods) + 2)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(rule) + "|"]

    def cells(get) -> list[str]:
        out = []
        for methods in by_subject.values():
            first = get(next(iter(methods.values())))
            out.append(str(first.n) if first.n else "0")
            for results in methods.values():
                r = get(results)
                out.append(f"{r.rate:.2f} ({r.best_possible:.2f})" if r.n else "-")
            out.append(f"{first.body_baseline:.3f}" if first.n else "-")
        return out

    shown = [k for k in labels if any(k in res and res[k].n for m in by_subject.values() for res in m.values())]
    for label in shown:
        lines.append(f"| {label} | " + " | ".join(cells(lambda res, k=label: res.get(k) or PointingResult(k))) + " |")
    lines.append("| **focal findings** | " + " | ".join(cells(lambda res: pooled(res, focal))) + " |")
    lines.append("| **all labels** | " + " | ".join(cells(lambda res: pooled(res, list(res)))) + " |")
    return "\n".join(lines)


MIN_CASES, MIN_RATE = 5, 0.6


def validated_labels(bench: dict, min_cases: int = MIN_CASES, min_rate: float = MIN_RATE) -> dict[str, dict]:
    """The localisation record of a model folder from ``bench/pointing_game.py --json`` output.

    A label's maps are validated for a method when the benchmark counted at least ``min_cases`` true
    positives and the method's pointing accuracy reached ``min_rate`` (the goal of issue 14).

    Returns:
        ``{"rule", "benchmark", "methods": {method: {"validated": [labels], "measured": {label: row}}}}``.
    """
    methods = {}
    for method, rows in bench.get("methods", {}).items():
        ok = [k for k, r in rows.items() if r["n"] >= min_cases and (r["rate"] or 0.0) >= min_rate]
        methods[method] = {"validated": ok, "measured": rows}
    rule = (f"pointing game on the synthetic world, hit within {bench.get('margin_mm')} mm of the lesion (its ball of "
            "half its size; the recorded region of pericardial and pleural fluid): "
            f"at least {min_cases} true positives and a hit rate of at least {min_rate}")
    return {"rule": rule, "benchmark": {k: bench.get(k) for k in ("model", "world", "split", "n_volumes")},
            "methods": methods}


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
    rows = add_missing_regions(world, rows)
    paths = {_stem(p.name): p for p in (root / "dataset").rglob("*.nii.gz")}
    missing = [r["VolumeName"] for r in rows if _stem(r["VolumeName"]) not in paths]
    if missing:
        raise FileNotFoundError(f"{root / 'dataset'}: {len(missing)} volume(s) of {gt.name} not found, "
                                f"e.g. {missing[0]}")
    return rows, paths


REGION_LABELS = ("Pericardial effusion", "Pleural effusion")  # lesions the world records a Region for


def add_missing_regions(world: str | Path, rows: list[dict]) -> list[dict]:
    """Ground-truth rows of a world written before lesions recorded their ``region``, with the regions added.

    Each scan's lesions are rebuilt from the world's seed (``world.json``; no rendering) and must match the
    rows' labels and centres; the rows are copied, not changed in place.

    Raises:
        ValueError: the rebuilt lesions differ from the rows (the world was written by other synth code).
    """
    need = [i for i, r in enumerate(rows)
            if any(les.get("label") in REGION_LABELS and "region" not in les for les in r.get("lesions", []))]
    if not need:
        return rows
    from ctxray.synth.scans import SCAN_LETTERS, ScanTask, scan_lesions

    seed = int(json.loads((Path(world) / "world.json").read_text())["seed"])
    rows = list(rows)
    for i in need:
        row = rows[i]
        split, pid, letter, _recon = _stem(row["VolumeName"]).rsplit("_", 3)
        built = scan_lesions(ScanTask(None, split, int(pid), SCAN_LETTERS.index(letter), 1, None, seed))[3]
        same = [les.label for les in built] == [rec["label"] for rec in row["lesions"]] and all(
            np.allclose(les.centre_mm, rec["center_mm"], atol=0.11) for les, rec in zip(built, row["lesions"]))
        if not same:
            raise ValueError(f"{world}: the lesions of {row['VolumeName']} rebuilt from seed {seed} differ from its "
                             "ground truth; regenerate the world with this version of ctxray synth")
        lesions = [{**rec, "region": les.attrs["region"]} if "region" in les.attrs else rec
                   for les, rec in zip(built, row["lesions"])]
        rows[i] = {**row, "lesions": lesions}
    return rows


def _stem(name: str) -> str:
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name


class PointingModel(Protocol):
    """What :func:`collect_cases` needs of a model (``CTModel`` has it; so does the bench's classifier)."""

    labels: list[str]
    spec: Any

    def read(self, volume: Any) -> Any: ...

    def preprocess(self, volume: Any) -> Any: ...

    def decisions(self, x: Any) -> dict[str, bool]: ...

    def relevance_input(self, x: Any, label: str, method: str = "gradcam") -> Any: ...


def collect_cases(model: PointingModel, rows: Iterable[dict], paths: dict[str, Path], require_decision: bool = True,
                  seed: int = 0, method: str = "gradcam", margin_mm: float = 10.0, top_fraction: float = 0.005
                  ) -> tuple[list[PointingCase], dict[str, dict[str, int]]]:
    """The map's point, energy and grid for each localised true positive of the ground truth.

    Args:
        model: a loaded ``CTModel`` (or anything with its :class:`PointingModel` methods).
        rows: ground-truth rows (``read_ground_truth``).
        paths: volume name (without ``.nii.gz``) -> volume file.
        require_decision: count only labels the model decides positive (true positives); False takes
            every ground-truth positive (the map is then judged even where the model said no).
        seed: RNG seed of the body points (the body baseline's draws, 2000 per volume).
        method: explanation method (``ctxray.inference.heatmap.METHODS``).
        margin_mm: dilation of the lesion spheres for the energy measure (use the pointing game's margin).
        top_fraction: share of body voxels whose centroid is the map's point (:func:`map_point`).

    Returns:
        (cases, per-label counts ``{"gt_pos", "tp", "tp_localised"}``).
    """
    rows = list(rows)
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {n: {"gt_pos": 0, "tp": 0, "tp_localised": 0} for n in model.labels}
    cases: list[PointingCase] = []
    for row in progress(rows, total=len(rows), desc="pointing game", unit="vol"):
        name, body, body_points = row["VolumeName"], None, None
        vol = model.read(paths[_stem(name)])
        x = model.preprocess(vol)
        decided = model.decisions(x)
        for label, present in row["labels"].items():
            if not present or label not in counts:
                continue
            counts[label]["gt_pos"] += 1
            if require_decision and not decided[label]:
                continue
            counts[label]["tp"] += 1
            lesions = lesions_of(row, label)
            if not lesions:
                continue
            counts[label]["tp_localised"] += 1
            if body is None:
                body = body_mask(vol.hu)
                idx = np.flatnonzero(body)
                body_points = np.stack(np.unravel_index(rng.choice(idx, size=2000), body.shape), axis=1)
            rel = model.relevance_input(x, label, method)
            heat = invert_map(model.spec, rel.map, vol.hu.shape, vol.spacing_zyx)
            grid = None if rel.grid is None else grid_centres(model.spec, rel.grid, vol.hu.shape, vol.spacing_zyx)
            cases.append(PointingCase(name, label, map_point(heat, body, top_fraction), lesions, tuple(vol.hu.shape),
                                      tuple(vol.spacing_zyx), body_points,
                                      lesion_energy(heat, lesions, vol.spacing_zyx, margin_mm), grid))
    return cases, counts


def body_mask(hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """The body: the largest connected region above ``threshold_hu``, holes filled (the lungs belong to it).

    Shape: (D, H, W) -> (D, H, W) bool (all True when nothing is above the threshold).
    """
    from scipy import ndimage

    mask = hu > threshold_hu
    lab, k = ndimage.label(mask)
    if k == 0:
        return np.ones(hu.shape, bool)
    largest = 1 + int(np.argmax(ndimage.sum(mask, lab, index=range(1, k + 1))))
    filled = ndimage.binary_fill_holes(lab == largest)
    # lungs open to the air at the slab ends are not holes in 3D: fill slice by slice too
    for z in range(filled.shape[0]):
        filled[z] = ndimage.binary_fill_holes(filled[z])
    return filled


def _body_sample(hu: np.ndarray, rng: np.random.Generator, n: int = 2000, threshold_hu: float = -500.0) -> np.ndarray:
    """Voxels drawn uniformly from :func:`body_mask`. Shape: (n, 3)."""
    idx = np.flatnonzero(body_mask(hu, threshold_hu))
    return np.stack(np.unravel_index(rng.choice(idx, size=n), hu.shape), axis=1)
