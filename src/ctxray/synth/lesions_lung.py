"""Lung, airway and pleural lesions (builders with the signature of :data:`ctxray.synth.lesions.Builder`).

Every shape here paints only over lung tissue (``within=LUNGS``), so a consolidation spares the
airways inside it (air bronchograms) and an effusion stays in its pleural space.
"""

from __future__ import annotations

import numpy as np

from ctxray.synth.anatomy import Anatomy, bronchial_segments
from ctxray.synth.atlas import Atlas
from ctxray.synth.canvas import LUNGS, Ellipsoid, Shape, Spheres, Tissue, merge, segments, tube
from ctxray.synth.lesions import Lesion, _tup

T = Tissue
SIDES = ("right", "left")


def _sides(rng: np.random.Generator, p_bilateral: float) -> list[str]:
    if rng.random() < p_bilateral:
        return list(SIDES)
    return [str(rng.choice(SIDES, p=[0.55, 0.45]))]


def _lat(sides: list[str]) -> str:
    return "bilateral" if len(sides) == 2 else sides[0]


def emphysema(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    sev = str(rng.choice(["mild", "moderate", "severe"], p=[0.5, 0.35, 0.15]))
    n = {"mild": 40, "moderate": 90, "severe": 180}[sev]
    kind = str(rng.choice(["centrilobular", "paraseptal"], p=[0.75, 0.25]))
    depth = (0.0, 10.0) if kind == "paraseptal" else (8.0, 1e9)
    centres = np.concatenate([atlas.sample_lung_points(side, rng, n // 2, "upper", *depth) for side in SIDES])
    radii = rng.uniform(2.5, 7.0 if sev != "mild" else 4.5, len(centres))
    shapes: list[Shape] = [Spheres(centres, radii, -990, None, within=LUNGS), *_hyperinflation(a, sev)]
    return [Lesion("Emphysema", f"{kind} emphysema", "both upper lobes", "bilateral", _tup(centres.mean(0)),
                   float(2 * radii.max()), shapes, {"severity": sev})]


EMPHYSEMA_DROP_MM = {"mild": 12.0, "moderate": 20.0, "severe": 28.0}
EMPHYSEMA_LUCENCY_HU = {"mild": -30.0, "moderate": -50.0, "severe": -70.0}


def _hyperinflation(a: Anatomy, sev: str) -> list[Shape]:
    """What makes emphysema visible on a frontal radiograph (and a CT): hyperinflated, hyperlucent lungs.

    Per side, the lung takes over the top of the dome below it (liver on the right, stomach and spleen on
    the left) down to a flat level ``EMPHYSEMA_DROP_MM`` below the dome: the hemidiaphragms are lower and
    flattened, and more ribs project over the lungs. The whole lung loses ``EMPHYSEMA_LUCENCY_HU`` of
    density (destroyed parenchyma), a bit more in the upper zones. No random draws, so adding the signs
    left every other lesion of a patient as it was.
    """
    sz, sy, sx = a.shift
    drop, lucency = EMPHYSEMA_DROP_MM[sev], EMPHYSEMA_LUCENCY_HU[sev]
    shapes: list[Shape] = []
    for side, code, dome, organ in (("right", T.LUNG_R, a.dome_r, (T.LIVER,)), ("left", T.LUNG_L, a.dome_l,
                                                                                 (T.SOFT, T.GAS))):
        sign = 1.0 if side == "right" else -1.0
        # footprint inside the thoracic cavity, clear of the mediastinum (oesophagus, airways)
        inner, outer = 36.0, 0.94 * a.cavity_ax
        cx, rx = sx + sign * (inner + outer) / 2, (outer - inner) / 2
        flat = sz + dome - drop
        shapes.append(Ellipsoid((flat, sy - 0.08 * a.cavity_ay, cx), (60.0, 0.7 * a.cavity_ay, rx), -880.0, code,
                                within=organ, plane=((-1.0, 0.0, 0.0), -flat)))
        c, r = a.lung_box(side)
        shapes.append(Ellipsoid((c[0] - drop / 2, c[1], c[2]), (r[0] * 1.3, r[1] * 1.2, r[2] * 1.3), lucency,
                                None, within=(code,), add=True))
        shapes.append(Ellipsoid((c[0] + r[0] * 0.6, c[1], c[2]), (r[0] * 0.6, r[1] * 1.2, r[2] * 1.3),
                                lucency * 0.5, None, within=(code,), add=True, edge=20.0))
    return shapes


def atelectasis(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    eff_sides = a.extra.get("effusion_sides", [])
    sides = eff_sides or _sides(rng, 0.3)
    out = []
    for side in sides:
        p = atlas.sample_lung_point(side, rng, "lower", 0.0, 14.0, posterior=True)
        if eff_sides:
            kind, lo, hi = "passive", (14, 12, 25), (24, 20, 40)
        else:
            kind, lo, hi = "subsegmental", (4, 14, 22), (7, 24, 36)
        rad = tuple(float(v) for v in rng.uniform(lo, hi))
        shapes: list[Shape] = [Ellipsoid(_tup(p), rad, float(rng.uniform(-60, 25)), T.LESION, within=LUNGS,
                                         rot=float(rng.uniform(-0.4, 0.4)), edge=2.0)]
        out.append(Lesion("Atelectasis", f"{kind} atelectasis", atlas.lobe(p)[1], side, _tup(p), 2 * max(rad), shapes))
    return out


def lung_nodule(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    n = int(rng.choice([1, 1, 1, 2, 3]))
    min_d = a.extra.get("min_nodule_mm", 4.0)
    scale = a.extra.get("nodule_size_scale", 1.0)  # radiograph subjects: the nodules a radiograph reports
    out = []
    for _ in range(n):
        d = float(np.clip(rng.lognormal(np.log(8), 0.5) * scale, min_d, 30))
        side = str(rng.choice(SIDES))
        p = atlas.sample_lung_point(side, rng, "any", d / 2 + 2)
        kind = str(rng.choice(["solid", "part-solid", "calcified"], p=[0.75, 0.12, 0.13]))
        value = {"solid": 35.0, "part-solid": -250.0, "calcified": 400.0}[kind]
        shapes: list[Shape] = [Ellipsoid(_tup(p), (d / 2, d / 2 * 0.9, d / 2), value, T.LESION, within=LUNGS,
                                         edge=min(1.0, d / 6))]
        if d > 12:  # lobulated contour
            for _k in range(3):
                off = rng.normal(0, d / 5, 3)
                shapes.append(Ellipsoid(_tup(p + off), (d / 3,) * 3, value, T.LESION, within=LUNGS, edge=1.0))
        out.append(Lesion("Lung nodule", f"{kind} nodule", atlas.lobe(p)[1], side, _tup(p), round(d, 1), shapes))
    return out


def lung_opacity(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    sides = _sides(rng, 0.4)
    out = []
    for side in sides:
        p = atlas.sample_lung_point(side, rng, "any", 5.0)
        spread = float(rng.uniform(15, 35))
        centres = p + rng.normal(0, spread / 2, (int(rng.integers(4, 10)), 3))
        shapes: list[Shape] = [Ellipsoid(_tup(c), tuple(float(v) for v in rng.uniform(8, 18, 3)), 260.0, None,
                                         within=LUNGS, add=True, edge=5.0) for c in centres]
        out.append(Lesion("Lung opacity", "ground-glass opacity", atlas.lobe(p)[1], side, _tup(p), 2 * spread,
                          shapes))
    return out


def pulmonary_fibrotic_sequela(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    side = str(rng.choice(SIDES))
    zone = str(rng.choice(["upper", "lower"]))
    centre, _ = a.lung_box(side)
    out = []
    # two subpleural scars in one zone, each of thick parenchymal bands running from the pleura toward the
    # hilum: line-like, peripheral and thicker than the vessels there (one scar of thinner bands in a haze was a
    # small ground-glass opacity at a 5 mm grid); no haze, so a radiograph still shows little
    for p in atlas.sample_lung_points(side, rng, 2, zone, 3.0, 16.0):
        shapes: list[Shape] = []
        for _ in range(int(rng.integers(5, 9))):
            d = np.asarray(centre) - p
            d = d / np.linalg.norm(d) + rng.normal(0, 0.5, 3)
            d /= np.linalg.norm(d)
            start = p + rng.normal(0, 6, 3)
            shapes.append(tube(np.stack([start - d * 6, start + d * rng.uniform(22, 38)]),
                               float(rng.uniform(2.0, 2.8)), -40, step=1.0, tissue=T.LESION, within=LUNGS))
        out.append(Lesion("Pulmonary fibrotic sequela", "fibrotic bands", atlas.lobe(p)[1], side, _tup(p), 40.0,
                          shapes))
    return out


def pleural_effusion(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    sides = _sides(rng, 0.4)
    a.extra["effusion_sides"] = sides
    out = []
    for side in sides:
        c, r = a.lung_box(side)
        depth = float(rng.uniform(12, 60))
        back = c[1] - r[1]
        centre = (c[0] - r[0] * 0.45, c[1], c[2])
        shapes: list[Shape] = [Ellipsoid(centre, (r[0] * 0.75, r[1] * 1.1, r[2] * 1.1), float(rng.uniform(2, 18)),
                                         T.FLUID, within=LUNGS, plane=((0.0, 1.0, 0.0), back + depth))]
        sev = "small" if depth < 25 else "moderate" if depth < 45 else "large"
        where = (centre[0] - r[0] * 0.3, back + depth / 2, c[2])
        # a posterior layer as wide as the lung, not a ball of its depth: its region for the pointing game
        region = {"offset_mm": [round(float(u - v), 1) for u, v in zip(centre, where)],
                  "radii_mm": [round(float(v), 1) for v in shapes[0].radii], "rot": 0.0,
                  "plane": [[0.0, 1.0, 0.0], round(float(back + depth - centre[1]), 1)]}
        out.append(Lesion("Pleural effusion", "pleural fluid", f"{side} pleural space", side, where, round(depth),
                          shapes, {"severity": sev, "region": region}))
    return out


def mosaic_attenuation_pattern(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    centres = np.concatenate([atlas.sample_lung_points(s, rng, 14, "any", 6.0) for s in SIDES])
    shapes: list[Shape] = [Ellipsoid(_tup(c), tuple(float(v) for v in rng.uniform(12, 24, 3)), -85.0, None,
                                     within=LUNGS, add=True, power=3.0, edge=2.0) for c in centres]
    return [Lesion("Mosaic attenuation pattern", "mosaic attenuation", "both lungs", "bilateral",
                   _tup(centres.mean(0)), 40.0, shapes)]


def _bronchi(a: Anatomy, sides: list[str], lower_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bronchial segments ``(p0, p1, lumen radius)`` of the patient's tree on the given sides."""
    p0, p1, r = bronchial_segments(a)
    side_ok = np.where(p0[:, 2] > a.shift[2], "right", "left")
    keep = np.isin(side_ok, sides)
    if lower_only and (keep & (p1[:, 0] < a.shift[0] + 40)).any():
        keep &= p1[:, 0] < a.shift[0] + 40
    return p0[keep], p1[keep], r[keep]


def peribronchial_thickening(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    sides = _sides(rng, 0.6)
    wall = float(rng.uniform(2.0, 3.5))
    p0, p1, r = _bronchi(a, sides)
    shapes: list[Shape] = [segments(p0, p1, r + 0.8 + wall, 45, step=1.0, within=LUNGS)]
    c = (p0.mean(0) + p1.mean(0)) / 2
    return [Lesion("Peribronchial thickening", "bronchial wall thickening", "central and lower zone bronchi",
                   _lat(sides), _tup(c), wall, shapes)]


def consolidation(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    sides = _sides(rng, 0.25)
    out = []
    for side in sides:
        p = atlas.sample_lung_point(side, rng, str(rng.choice(["lower", "any"])), 12.0, posterior=True)
        rad = tuple(float(v) for v in rng.uniform(20, 42, 3))
        shapes: list[Shape] = [Ellipsoid(_tup(p), rad, float(rng.uniform(20, 45)), T.LESION, within=LUNGS,
                                         power=2.5, edge=3.0)]
        for _ in range(3):
            shapes.append(Ellipsoid(_tup(p + rng.normal(0, 12, 3)), tuple(r * 0.6 for r in rad),
                                    float(rng.uniform(20, 45)), T.LESION, within=LUNGS, edge=3.0))
        out.append(Lesion("Consolidation", "airspace consolidation", atlas.lobe(p)[1], side, _tup(p), 2 * max(rad),
                          shapes))
    return out


def bronchiectasis(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    sides = _sides(rng, 0.5)
    p0, p1, r = _bronchi(a, sides, lower_only=True)
    factor = float(rng.uniform(2.6, 3.6))  # lumen well beyond its artery's calibre (the signet-ring sign)
    shapes: list[Shape] = [
        segments(p0, p1, r * factor + 1.5, 45, step=1.0, within=LUNGS),
        segments(p0, p1, r * factor, -990, step=1.0, tissue=T.AIRWAY, within=(*LUNGS, T.AIRWAY)),
    ]
    c = (p0.mean(0) + p1.mean(0)) / 2
    kind = str(rng.choice(["cylindrical", "varicose"], p=[0.8, 0.2]))
    return [Lesion("Bronchiectasis", f"{kind} bronchiectasis", "lower lobes" if len(sides) == 2 else
                   f"{sides[0]} lower lobe", _lat(sides), _tup(c), round(float(2 * factor * r.mean()), 1),
                   shapes)]


def interlobular_septal_thickening(a: Anatomy, atlas: Atlas, rng: np.random.Generator,
                                   labels: dict) -> list[Lesion]:
    sides = _sides(rng, 0.7)
    shapes: list[Shape] = []
    pts = []
    for side in sides:
        c, _ = a.lung_box(side)
        for p in atlas.sample_lung_points(side, rng, 44, "lower", 0.0, 8.0):
            inward = np.array([0.0, c[1] - p[1], c[2] - p[2]])
            inward /= max(np.linalg.norm(inward), 1e-6)
            pts.append(p)
            line = np.stack([p - inward * 4, p + inward * rng.uniform(12, 22)])
            shapes.append(tube(line, float(rng.uniform(1.2, 1.8)), -120, step=1.0, within=LUNGS))
    shapes = [merge(shapes)]
    return [Lesion("Interlobular septal thickening", "smooth septal thickening", "lung bases, subpleural",
                   _lat(sides), _tup(np.mean(pts, axis=0)), 2.0, shapes)]
