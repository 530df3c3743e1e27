"""Lesions: one builder per CT-RATE label, each returning shapes plus what a report needs to say.

A :class:`Lesion` carries its shapes, so a patient can be painted with or without any of them
(the visibility tests compare both). This module holds the mediastinal, cardiac, vascular and
device findings; :mod:`ctxray.synth.lesions_lung` holds the lung and pleural ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ctxray.synth.anatomy import Anatomy
from ctxray.synth.atlas import Atlas
from ctxray.synth.canvas import LUNGS, Ellipsoid, Shape, Spheres, Tissue, tube

T = Tissue
NOT_BONE = (T.FAT, T.SOFT, *LUNGS, T.HEART, T.VESSEL, T.LESION, T.FLUID)


@dataclass
class Lesion:
    """One rendered abnormality.

    Args:
        label: CT-RATE label name.
        kind: finer kind ("pacemaker", "solid nodule", ...).
        location: anatomical location in report words.
        laterality: "right", "left", "bilateral" or "midline".
        centre_mm: ``(z, y, x)`` mm of the lesion's centre.
        size_mm: the size a report would quote (diameter, thickness, depth...).
        shapes: what to paint, in order.
        attrs: further facts for the report (severity, count, ratio...); ``region``: where a lesion whose shape
            is not a ball around ``centre_mm`` lies (``ctxray.inference.pointing.Region``).
    """

    label: str
    kind: str
    location: str
    laterality: str
    centre_mm: tuple[float, float, float]
    size_mm: float
    shapes: list[Shape] = field(default_factory=list)
    attrs: dict = field(default_factory=dict)


def heart_radii(a: Anatomy, labels: dict[str, int]) -> tuple[float, float, float]:
    """Heart semi-axes after any cardiomegaly (the cardiomegaly builder stores its factor)."""
    f = a.extra.get("heart_scale", 1.0) if labels.get("Cardiomegaly") else 1.0
    return (a.heart_radii[0] * f, a.heart_radii[1] * f, a.heart_radii[2] * f)


def _tup(p: np.ndarray) -> tuple[float, float, float]:
    return (float(p[0]), float(p[1]), float(p[2]))


def medical_material(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    sz, sy, sx = a.shift
    kind = str(rng.choice(["pacemaker", "port catheter", "sternotomy wires"], p=[0.45, 0.3, 0.25]))
    wall_y = sy + a.body_ay - a.fat * 0.5 - 4
    if kind == "sternotomy wires":
        zs = a.heart_centre[0] + np.linspace(-10, 90, int(rng.integers(4, 7)))
        front = wall_y - a.fat * 0.5 - 8  # the sternum's centre
        centres = np.stack([zs, np.full_like(zs, front), np.full_like(zs, sx)], axis=1)
        # each wire a loop around the sternum (a ring on an axial slice; metal blooms to ~3 mm on CT), not a bead
        t = np.linspace(0, 2 * np.pi, 25)
        shapes: list[Shape] = [tube(np.stack([np.full_like(t, z), front + 10 * np.sin(t), sx + 18 * np.cos(t)], axis=1),
                                    1.6, 2500, step=1.0, tissue=T.METAL) for z in zs]
        return [Lesion("Medical material", kind, "sternum", "midline", _tup(centres.mean(0)), 10.0, shapes)]
    side = "left" if kind == "pacemaker" else "right"
    x = sx + (a.body_ax * 0.55) * (1 if side == "right" else -1)
    box_c = np.array([sz + a.apex - 35, wall_y, x])
    svc_top = np.array([sz + a.apex - 30, sy + 8, sx + 20])
    tip = np.array([a.heart_centre[0] + (0 if kind == "pacemaker" else 25), a.heart_centre[1], a.heart_centre[2]
                    + (10 if kind == "pacemaker" else 30)])
    lead = np.stack([box_c, box_c + [5, -25, 0], svc_top, [svc_top[0] - 50, sy + 8, sx + 20], tip])
    size = 45.0 if kind == "pacemaker" else 25.0
    shapes = [Ellipsoid(_tup(box_c), (size / 2, 5, size / 2 + 4), 2800, T.METAL, power=3.0),
              tube(lead, 1.4, 2200, step=1.0)]
    return [Lesion("Medical material", kind, f"{side} anterior chest wall", side, _tup(box_c), size, shapes)]


def arterial_wall_calcification(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    # plaques large and dense enough to survive resampling to a 5 mm training grid (a heavy plaque burden)
    n = int(rng.integers(8, 25))
    seg = rng.choice(["aortic arch", "descending thoracic aorta", "aortic arch and descending aorta"])
    k0, k1 = {"aortic arch": (1, 3), "descending thoracic aorta": (3, 5)}.get(seg, (1, 5))
    t = rng.uniform(0, 1, n)
    i = rng.integers(k0, k1, n)
    pts = a.aorta[i] + (a.aorta[i + 1] - a.aorta[i]) * t[:, None]
    d = rng.normal(0, 1, (n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    centres = pts + d * a.aorta_r
    radii = rng.uniform(2.4, 4.5, n)
    shapes: list[Shape] = [Spheres(centres, radii, float(rng.uniform(700, 1200)), T.LESION, within=NOT_BONE)]
    return [Lesion("Arterial wall calcification", "atherosclerotic plaques", str(seg), "midline",
                   _tup(centres.mean(0)), float(2 * radii.max()), shapes, {"count": n})]


def cardiomegaly(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    f = a.extra.setdefault("heart_scale", float(rng.uniform(1.22, 1.42)))
    r = heart_radii(a, {"Cardiomegaly": 1})
    c = (a.heart_centre[0] + 6 * f, a.heart_centre[1], a.heart_centre[2] - 60 * (f - 1))
    a.extra["heart_centre_enlarged"] = c
    shapes: list[Shape] = [Ellipsoid(c, (r[0] + 4, r[1] + 4, r[2] + 4), -90, T.FAT, rot=a.heart_rot,
                                     within=(*LUNGS, T.FAT)),
                           Ellipsoid(c, r, 42, T.HEART, rot=a.heart_rot, edge=2.0, within=(*LUNGS, T.FAT, T.HEART))]
    ratio = 2 * r[2] * 0.93 / (2 * a.cavity_ax)
    return [Lesion("Cardiomegaly", "enlarged heart", "heart", "midline", c, 2 * r[2], shapes,
                   {"cardiothoracic_ratio": round(float(ratio), 2)})]


def pericardial_effusion(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    thick = float(rng.uniform(7, 20))
    r = heart_radii(a, labels)
    c = a.extra.get("heart_centre_enlarged", a.heart_centre)
    shapes: list[Shape] = [Ellipsoid(c, (r[0] + thick, r[1] + thick, r[2] + thick), 12, T.FLUID, rot=a.heart_rot,
                                     within=(*LUNGS, T.FAT))]
    sev = "minimal" if thick < 10 else "moderate" if thick < 16 else "large"
    # the fluid is a shell around the heart, not a ball of its thickness: its region for the pointing game
    region = {"offset_mm": [0.0, 0.0, 0.0], "radii_mm": [round(v + thick, 1) for v in r],
              "inner_radii_mm": [round(v, 1) for v in r], "rot": round(float(a.heart_rot), 4)}
    return [Lesion("Pericardial effusion", "pericardial fluid", "pericardium", "midline", c, thick, shapes,
                   {"severity": sev, "region": region})]


def coronary_artery_wall_calcification(a: Anatomy, atlas: Atlas, rng: np.random.Generator,
                                       labels: dict) -> list[Lesion]:
    r = np.array(heart_radii(a, labels))
    vessels = list(rng.choice(["LAD", "RCA", "LCx"], size=int(rng.integers(1, 4)), replace=False))
    angles = {"LAD": (0.9, 1.6), "RCA": (0.0, 0.6), "LCx": (2.3, 2.9)}
    centres = []
    for v in vessels:
        phi = rng.uniform(*angles[v], int(rng.integers(4, 9)))
        h = rng.uniform(0.1, 0.6, len(phi))
        local = np.stack([h * r[0], np.sin(phi) * r[1] * np.sqrt(1 - h**2), np.cos(phi) * r[2] * np.sqrt(1 - h**2)],
                         axis=1)
        cr, sr = np.cos(-a.heart_rot), np.sin(-a.heart_rot)
        x = cr * local[:, 2] + sr * local[:, 1]
        y = -sr * local[:, 2] + cr * local[:, 1]
        centres.append(np.stack([local[:, 0], y, x], axis=1) + np.array(a.heart_centre))
    pts = np.concatenate(centres)
    radii = rng.uniform(2.2, 4.0, len(pts))
    shapes: list[Shape] = [Spheres(pts, radii, float(rng.uniform(600, 1100)), T.LESION, within=NOT_BONE)]
    return [Lesion("Coronary artery wall calcification", "coronary plaques", ", ".join(sorted(vessels)), "midline",
                   _tup(pts.mean(0)), float(2 * radii.max()), shapes, {"vessels": sorted(vessels)})]


def hiatal_hernia(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    sz, sy, sx = a.shift
    rad = (float(rng.uniform(18, 32)), float(rng.uniform(16, 26)), float(rng.uniform(18, 30)))
    # behind the heart, left of the spine: its gas projects through the cardiac shadow on a radiograph
    c = (sz + a.dome_l + rad[0] * 0.6, sy - 22, sx - 12 - 0.6 * rad[2])
    gas_level = c[0] - rad[0] * 0.1  # gas over fluid: the air-fluid level a frontal radiograph shows
    shapes: list[Shape] = [
        Ellipsoid(c, rad, 38, T.SOFT, within=(*LUNGS, T.FAT, T.HEART, T.SOFT), edge=2.0),
        Ellipsoid(c, (rad[0] - 4, rad[1] - 4, rad[2] - 4), -1000, T.GAS, within=(T.SOFT,),
                  plane=((-1.0, 0.0, 0.0), -gas_level)),
    ]
    return [Lesion("Hiatal hernia", "sliding hiatal hernia", "posterior mediastinum, retrocardiac", "midline", c,
                   2 * max(rad), shapes)]


STATIONS = {  # name -> (dz from carina, dy, dx) in mm; +x is the patient's right
    "right paratracheal": (40, 6, 20), "subcarinal": (-22, -12, 0), "prevascular": (35, 35, -4),
    "aortopulmonary window": (18, 0, -22), "right hilar": (-18, 6, 52), "left hilar": (-10, 6, -54),
}


def lymphadenopathy(a: Anatomy, atlas: Atlas, rng: np.random.Generator, labels: dict) -> list[Lesion]:
    carina = a.trachea[-1]
    names = rng.choice(list(STATIONS), size=int(rng.integers(1, 4)), replace=False)
    out = []
    for name in names:
        d = np.array(STATIONS[str(name)], dtype=float)
        candidates = carina + d + rng.normal(0, 6, (12, 3))
        fat = [c for c in candidates if atlas.tissue_at(c) in (T.FAT, *LUNGS)]
        c = fat[0] if fat else candidates[0]  # nodes grow in the mediastinal and hilar fat
        short = float(rng.uniform(14, 28))
        rad = (short * 0.65, short / 2, short / 2 * rng.uniform(1.0, 1.4))
        side = "right" if "right" in name else "left" if "left" in name or "aorto" in name else "midline"
        shapes: list[Shape] = [Ellipsoid(_tup(c), rad, float(rng.uniform(32, 48)), T.LESION,
                                         within=(T.FAT, *LUNGS), edge=1.5)]
        out.append(Lesion("Lymphadenopathy", "enlarged lymph node", f"{name} station", side, _tup(c), short, shapes,
                          {"short_axis_mm": round(short)}))
    return out


Builder = Callable[[Anatomy, Atlas, np.random.Generator, dict], list[Lesion]]
