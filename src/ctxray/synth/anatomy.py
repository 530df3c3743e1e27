"""Normal chest anatomy of one synthetic patient, as shapes in millimetres.

A patient is drawn once (:func:`sample_anatomy`) and can then be painted on any grid: the CT grid of
each reconstruction and the coarser grid the radiograph is projected from. Densities are Hounsfield
units of a non-contrast chest CT: air -1000, lung about -850, fat about -100, muscle and blood
35-60, liver about 60, cancellous bone about 250, cortical bone 600-900.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ctxray.synth import canvas_ops as ops
from ctxray.synth.canvas import LUNGS, Canvas, Ellipsoid, Shape, Spheres, Tissue, merge, segments, tube

T = Tissue
TREE_LEVELS = 6


@dataclass
class Anatomy:
    """Per-patient anatomical parameters and landmarks (mm, RAS+ ``(z, y, x)``; +x is the patient's right).

    Args:
        shift: position of the patient on the table relative to the scanner centre.
        body_ax, body_ay: semi-axes of the body outline (x: left-right, y: front-back).
        fat, muscle: thickness of subcutaneous fat and chest wall muscle.
        dome_r, dome_l: height of the right and left diaphragm domes.
        apex: height of the lung apices.
        heart_centre, heart_radii, heart_rot: the normal heart ellipsoid.
        aorta: aortic centreline ``(K, 3)``; aorta_r its radius.
        trachea, bronchi: airway centrelines (carina and main bronchi to each hilum).
        female: adds breast soft tissue.
        vessel_seed: seed of the pulmonary vessel and bronchial trees.
        noise_hu, blur_vox: CT noise (HU s.d.) and partial-volume blur (voxels).
    """

    shift: tuple[float, float, float]
    body_ax: float
    body_ay: float
    fat: float
    muscle: float
    dome_r: float
    dome_l: float
    apex: float
    heart_centre: tuple[float, float, float]
    heart_radii: tuple[float, float, float]
    heart_rot: float
    aorta: np.ndarray
    aorta_r: float
    trachea: np.ndarray
    bronchi: dict[str, np.ndarray]
    female: bool
    vessel_seed: int
    noise_hu: float
    blur_vox: float
    spine_y: float = 0.0
    extra: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def cavity_ax(self) -> float:
        """Semi-axis (x) of the thoracic cavity inside the chest wall."""
        return self.body_ax - self.fat - self.muscle

    @property
    def cavity_ay(self) -> float:
        return self.body_ay - self.fat - self.muscle

    def lung_box(self, side: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Centre and semi-axes ``(z, y, x)`` of one lung's bounding ellipsoid ("right" or "left")."""
        sx, sy, sz = self.shift[2], self.shift[1], self.shift[0]
        base = (self.dome_r if side == "right" else self.dome_l) - 35.0
        half_z = (self.apex - base) / 2
        cx = self.cavity_ax * 0.53 * (1 if side == "right" else -1)
        return (sz + base + half_z, sy - 0.08 * self.cavity_ay, sx + cx), (half_z, self.cavity_ay * 0.9,
                                                                           self.cavity_ax * 0.45)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy: size, position, organ geometry, image quality."""
    shift = (rng.uniform(-12, 12), rng.uniform(-8, 8), rng.uniform(-10, 10))
    female = bool(rng.random() < 0.45)
    ax = rng.uniform(135, 170) - (8 if female else 0)
    ay = ax * rng.uniform(0.62, 0.74)
    fat, muscle = rng.uniform(6, 30), rng.uniform(9, 16)
    dome_r = rng.uniform(-80, -55)
    dome_l = dome_r - rng.uniform(8, 22)
    apex = rng.uniform(125, 145)
    sz, sy, sx = shift
    heart_radii = (rng.uniform(44, 54), rng.uniform(46, 56), rng.uniform(58, 70))
    heart_centre = (sz + dome_l + heart_radii[0] * 0.85, sy + ay * 0.18, sx - rng.uniform(18, 30))
    hz = heart_centre[0]
    aorta = np.array([
        [hz + 20, sy + 12, sx - 2], [hz + 70, sy + 14, sx + 8], [sz + 92, sy - 5, sx + 2],
        # the descending aorta runs left-anterolateral to the vertebral bodies, beside them, not through them
        [sz + 82, sy - 32, sx - 18], [sz + 50, sy - ay * 0.42, sx - 26], [sz - 170, sy - ay * 0.42, sx - 34],
    ])
    carina = np.array([sz + 45, sy - 12, sx])
    trachea = np.array([[sz + 170, sy - 2, sx], [sz + 110, sy - 6, sx + 2], carina])
    bronchi = {
        "right": np.array([carina, [sz + 28, sy - 16, sx + 42]]),
        "left": np.array([carina, [sz + 20, sy - 16, sx - 48]]),
    }
    return Anatomy(
        shift=shift, body_ax=ax, body_ay=ay, fat=fat, muscle=muscle, dome_r=dome_r, dome_l=dome_l, apex=apex,
        heart_centre=heart_centre, heart_radii=heart_radii, heart_rot=rng.uniform(-0.65, -0.35),
        aorta=aorta, aorta_r=rng.uniform(11.5, 15.5), trachea=trachea, bronchi=bronchi, female=female,
        vessel_seed=int(rng.integers(2**31)), noise_hu=rng.uniform(8, 22), blur_vox=rng.uniform(0.45, 0.8),
        spine_y=sy - ay + 48,
    )


def body_shapes(a: Anatomy) -> list[Shape]:
    """Body outline, chest wall, thoracic cavity, lungs, upper abdomen."""
    sz, sy, sx = a.shift
    far = 2000.0
    shoulders = sz + a.apex + 30.0
    below = ((1.0, 0.0, 0.0), shoulders)
    shapes: list[Shape] = [
        Ellipsoid((sz, sy, sx), (far, a.body_ay, a.body_ax), -95, T.FAT, power=2.4, plane=below),
        Ellipsoid((sz, sy, sx), (far, a.body_ay - a.fat, a.body_ax - a.fat), 48, T.SOFT, power=2.4, plane=below),
        Ellipsoid((sz, sy, sx), (far, a.cavity_ay, a.cavity_ax), -85, T.FAT, power=2.4, plane=below),
        Ellipsoid((sz, sy - 12, sx), (far, 45, 55), 45, T.SOFT, within=(T.AIR,),
                  plane=((-1.0, 0.0, 0.0), -(shoulders - 20))),  # the neck
    ]
    if a.female:
        for side in (1, -1):
            shapes.append(Ellipsoid((sz + 10, sy + a.body_ay - 18, sx + side * a.body_ax * 0.42), (45, 30, 50),
                                    -45, T.FAT, within=(T.AIR,)))
    for side, code in (("right", T.LUNG_R), ("left", T.LUNG_L)):
        c, r = a.lung_box(side)
        base, height = c[0] - r[0], 2 * r[0]
        # widest near the base, tapering to a rounded apex; the domes below sculpt the base
        shapes.append(Ellipsoid((base + 0.3 * height, c[1], c[2]), (0.7 * height, r[1], r[2] * 1.12), -860, code,
                                within=(T.FAT,), power=2.2, plane=((-1.0, 0.0, 0.0), -base)))
    # Upper abdomen under the domes: liver on the right, stomach and spleen on the left.
    ar, al = 95.0, 85.0
    shapes.append(Ellipsoid((sz + a.dome_r - ar, sy, sx + a.cavity_ax * 0.35), (ar, a.cavity_ay, a.cavity_ax * 0.9),
                            58, T.LIVER, within=(T.FAT, *LUNGS)))
    shapes.append(Ellipsoid((sz + a.dome_l - al, sy, sx - a.cavity_ax * 0.45), (al, a.cavity_ay * 0.85,
                            a.cavity_ax * 0.6), 38, T.SOFT, within=(T.FAT, *LUNGS)))
    shapes.append(Ellipsoid((sz + a.dome_l - 25, sy + 10, sx - a.cavity_ax * 0.5), (14, 22, 26), -1000, T.GAS,
                            within=(T.SOFT,), plane=((-1.0, 0.0, 0.0), -(sz + a.dome_l - 30))))
    return shapes


def mediastinum_shapes(a: Anatomy) -> list[Shape]:
    """Mediastinal fat, heart, great vessels, airways, oesophagus."""
    sz, sy, sx = a.shift
    hc, hr = a.heart_centre, a.heart_radii
    shapes: list[Shape] = [
        Ellipsoid((sz + 60, sy + 5, sx - 4), (115, a.cavity_ay * 0.95, 32), -80, T.FAT, within=(*LUNGS, T.FAT),
                  power=3.0),
        Ellipsoid(hc, (hr[0] + 5, hr[1] + 5, hr[2] + 5), -90, T.FAT, rot=a.heart_rot, within=(*LUNGS, T.FAT)),
        Ellipsoid(hc, hr, 42, T.HEART, rot=a.heart_rot, edge=2.0),
        tube(a.aorta, a.aorta_r, 40, step=2.0, tissue=T.VESSEL),
    ]
    pa = np.array([[hc[0] + 35, hc[1] + 10, hc[2] + 10], [sz + 40, sy + 5, sx - 18]])
    shapes.append(tube(pa, 12.0, 40, step=2.0, tissue=T.VESSEL))
    for side, hx in (("right", 50.0), ("left", -52.0)):
        hilum = [sz + 25 if side == "right" else sz + 32, sy - 4, sx + hx]
        shapes.append(tube(np.array([pa[-1], hilum]), 9.0, 40, step=2.0, tissue=T.VESSEL))
    shapes.append(tube(np.array([[sz + 170, sy + 8, sx + 22], [hc[0] + 40, sy + 8, sx + 20]]), 9.0, 38, step=2.0,
                       tissue=T.VESSEL))
    oes = np.array([[sz + 170, sy - 24, sx - 4], [sz + 40, sy - 30, sx - 6], [sz + a.dome_l - 10, sy - 20,
                                                                              sx - 30]])
    shapes.append(tube(oes, 8.0, 42, step=2.0, tissue=T.SOFT))
    for line, r in [(a.trachea, 9.5), (a.bronchi["right"], 6.5), (a.bronchi["left"], 6.0)]:
        shapes.append(tube(line, r + 2.0, 50, step=1.5, tissue=T.SOFT))
    for line, r in [(a.trachea, 9.5), (a.bronchi["right"], 6.5), (a.bronchi["left"], 6.0)]:
        shapes.append(tube(line, r, -1000, step=1.5, tissue=T.AIRWAY))
    return shapes


def skeleton_shapes(a: Anatomy) -> list[Shape]:
    """Vertebrae, ribs with costal cartilage, sternum, clavicles, scapulae."""
    sz, sy, sx = a.shift
    shapes: list[Shape] = []
    for zk in np.arange(-170.0, 180.0, 27.0):
        c = (sz + zk, a.spine_y, sx)
        shapes.append(Ellipsoid(c, (12.5, 18, 21), 1100, T.BONE, power=3.0))
        shapes.append(Ellipsoid(c, (10.0, 15, 18), 260, T.BONE, power=3.0))
        shapes.append(Ellipsoid((c[0], c[1] - 26, c[2]), (11, 11, 13), 600, T.BONE))
        shapes.append(Ellipsoid((c[0], c[1] - 26, c[2]), (12, 7, 7), 15, T.SOFT))
        shapes.append(Ellipsoid((c[0] - 6, c[1] - 44, c[2]), (8, 12, 5), 550, T.BONE))
    ribs: list[Spheres] = []
    cartilage: list[Spheres] = []
    inset = a.fat + a.muscle * 0.45
    ray, rax = a.body_ay - inset, a.body_ax - inset
    for k in range(11):
        z_back = sz + a.apex - 10 - k * 24.0
        for side in (1, -1):
            t = np.linspace(-np.pi / 2 + 0.35, np.pi / 2 - 0.42, 24)
            xs, ys = side * rax * np.cos(t) ** 0.9, ray * np.sin(t)
            zs = z_back - 55 * (t - t[0]) / (t[-1] - t[0]) ** 1.0 * (0.6 + 0.04 * k)
            pts = np.stack([zs, sy + ys, sx + xs], axis=1)
            ribs.append(tube(pts, 4.5, 950, step=1.5, tissue=T.BONE, within=(T.SOFT, T.FAT)))
            cart = np.array([pts[-1], [pts[-1][0] - 8, sy + a.body_ay - a.fat - 12, sx + side * 18]])
            if k < 7:
                cartilage.append(tube(cart, 4.0, 130, step=1.5, tissue=T.SOFT, within=(T.SOFT, T.FAT)))
    shapes += [merge(ribs), merge(cartilage)]
    front = sy + a.body_ay - a.fat - 12
    shapes.append(Ellipsoid((a.heart_centre[0] + 35, front, sx), (90, 7, 15), 420, T.BONE))
    for side in (1, -1):
        cl = np.array([[sz + a.apex - 15, front - 2, sx + side * 18], [sz + a.apex, sy + a.body_ay * 0.2,
                                                                        sx + side * (a.body_ax - 22)]])
        shapes.append(tube(cl, 7.0, 900, step=1.5, tissue=T.BONE))
        shapes.append(Ellipsoid((sz + a.apex - 50, sy - a.body_ay + a.fat + 14, sx + side * (a.body_ax - 55)),
                                (65, 5, 40), 520, T.BONE, rot=side * 0.35, within=(T.SOFT, T.FAT)))
    return shapes


def tree(a: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The patient's bronchovascular tree as segments ``(p0 (N, 3), p1 (N, 3), radius (N,))`` in mm.

    Branches grow from each hilum outward with shrinking radius (built once per patient).
    """
    if "tree" not in a.cache:
        rng = np.random.default_rng(a.vessel_seed)
        sides = [_side_segments(a, side, rng) for side in ("right", "left")]
        a.cache["tree"] = tuple(np.concatenate([part for levels in sides for part in levels[i]]) for i in range(3))
    return a.cache["tree"]


def bronchial_segments(a: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Peripheral bronchi ``(p0, p1, lumen radius)``: beside each artery of radius >= 2.5 mm."""
    p0, p1, rad = tree(a)
    keep = rad >= 2.5
    off = np.zeros((int(keep.sum()), 3))
    off[:, 2] = rad[keep] * 1.6
    return p0[keep] + off, p1[keep] + off, rad[keep] * 0.8


def lung_tree(a: Anatomy) -> list[Spheres]:
    """Pulmonary vessels, then bronchial walls and lumens, each bronchus running beside its artery."""
    p0, p1, rad = tree(a)
    b0, b1, br = bronchial_segments(a)
    return [segments(p0, p1, rad, 40, within=LUNGS), segments(b0, b1, br + 0.8, 40, within=LUNGS),
            segments(b0, b1, br, -990, tissue=T.AIRWAY, within=(*LUNGS, T.AIRWAY))]


def _lung_points(a: Anatomy, side: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random points inside the painted ellipsoid of one lung (rejection sampling), ``(n, 3)`` mm."""
    c, r = a.lung_box(side)
    base, height = c[0] - r[0], 2 * r[0]
    centre = np.array([base + 0.3 * height, c[1], c[2]])
    radii = np.array([0.7 * height, r[1], r[2] * 1.12])
    pts = centre + rng.uniform(-1, 1, (4 * n, 3)) * radii
    inside = (np.abs((pts - centre) / radii) ** 2.2).sum(axis=1) < 0.8
    inside &= (pts[:, 0] > base + 10) & (np.abs(pts[:, 2] - a.shift[2]) > 40)
    pts = pts[inside]
    return pts[:n] if len(pts) >= n else np.concatenate([pts, np.repeat(centre[None], n - len(pts), axis=0)])


def _side_segments(a: Anatomy, side: str,
                   rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Grow one lung's tree level by level: every branch forks in two thinner, shorter children, each
    heading for a random point of the lung, so the tree fills the lung as real vessels do.

    Returns:
        Per level, the segments' starts ``(n, 3)``, ends ``(n, 3)`` and radii ``(n,)``.
    """
    c, r = a.lung_box(side)
    hilum = np.array([c[0] - 0.1 * r[0], a.shift[1] - 6, a.bronchi[side][-1][2]])
    starts, radii = np.repeat(hilum[None], 5, axis=0), np.full(5, 5.5)
    out: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for _level in range(TREE_LEVELS):
        targets = _lung_points(a, side, rng, len(starts))
        to = targets - starts
        dist = ops.row_norms(to, keepdims=True)
        dirs = to / np.maximum(dist, 1e-6) + rng.normal(0, 0.15, to.shape)
        dirs /= ops.row_norms(dirs, keepdims=True)
        length = np.clip(dist[:, 0] * rng.uniform(0.4, 0.7, len(starts)), 6.0, 70.0)
        ends = starts + dirs * length[:, None]
        for part, level in zip(out, (starts, ends, radii)):
            part.append(level)
        starts, radii = np.repeat(ends, 2, axis=0), np.maximum(np.repeat(radii, 2) * 0.72, 0.8)
    return out


def anatomy_shapes(a: Anatomy) -> tuple[list[Shape], list[Shape]]:
    """The patient's shapes before and after the lung density gradient (built once per patient)."""
    if "shapes" not in a.cache:
        a.cache["shapes"] = (body_shapes(a) + mediastinum_shapes(a), lung_tree(a) + skeleton_shapes(a))
    return a.cache["shapes"]


def paint_anatomy(canvas: Canvas, a: Anatomy) -> None:
    """Paint the normal chest of patient ``a`` onto ``canvas`` (lungs with a gravity gradient)."""
    first, second = anatomy_shapes(a)
    for shape in first:
        canvas.paint(shape)
    lung = (canvas.tissue == T.LUNG_R) | (canvas.tissue == T.LUNG_L)
    y = canvas.grid.axes()[1][None, :, None] - a.shift[1]
    grad = np.broadcast_to(np.float32(-0.22) * y, canvas.hu.shape)
    np.add(canvas.hu, grad, out=canvas.hu, where=lung)  # dependent lung is denser
    for shape in second:
        canvas.paint(shape)
