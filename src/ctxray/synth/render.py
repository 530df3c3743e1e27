"""Render a synthetic patient: CT volumes in HU and frontal radiographs (digitally reconstructed).

Both renderers take the lesions explicitly and an ``exclude`` set of labels, so the same patient
can be rendered with and without a finding, with identical noise (the visibility tests do that).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from ctxray.synth.anatomy import Anatomy, paint_anatomy
from ctxray.synth.canvas import Canvas, Ellipsoid, Grid, Shape, Tissue
from ctxray.synth.lesions import Lesion

XRAY_FOV_MM = 420.0
XRAY_DEPTH_SAMPLES = 0.35  # AP samples per lateral pixel
METAL_MU = 15.0  # attenuation of metal devices relative to water on a radiograph
METAL_HU = 2000.0  # shapes painted at least this dense are metal devices
PROJECT_SLAB = 8  # z-rows projected at a time


@dataclass(frozen=True)
class Reconstruction:
    """How one CT reconstruction differs from another of the same scan.

    Args:
        kernel: "soft" (smoother, less noise) or "sharp" (more noise, less blur).
    """

    kernel: str = "soft"

    def noise_factor(self) -> float:
        return 1.0 if self.kernel == "soft" else 2.2

    def blur_factor(self) -> float:
        return 1.0 if self.kernel == "soft" else 0.45


def paint_patient(anatomy: Anatomy, lesions: Iterable[Lesion], grid: Grid, exclude: Iterable[str] = ()) -> Canvas:
    """Anatomy then lesions (minus the ``exclude`` labels) on a fresh canvas, without noise or blur."""
    skip = set(exclude)
    canvas = Canvas(grid)
    paint_anatomy(canvas, anatomy)
    for lesion in lesions:
        if lesion.label in skip:
            continue
        for shape in lesion.shapes:
            canvas.paint(shape)
    return canvas


def render_ct(anatomy: Anatomy, lesions: Iterable[Lesion], grid: Grid, noise_seed: int,
              recon: Reconstruction = Reconstruction(), exclude: Iterable[str] = ()) -> np.ndarray:
    """A CT volume in Hounsfield units.

    Partial-volume blur (Gaussian, the patient's width scaled by the kernel) then Gaussian noise,
    rounded and clipped to the int16 range CT scanners store (-1024..3071).

    Args:
        grid: the reconstruction grid.
        noise_seed: seed of the noise field (same seed, same noise).

    Returns:
        ``(D, H, W)`` int16 HU, RAS array convention.
    """
    return acquire(paint_patient(anatomy, lesions, grid, exclude).hu, anatomy, grid, noise_seed, recon)


def acquire(hu: np.ndarray, anatomy: Anatomy, grid: Grid, noise_seed: int,
            recon: Reconstruction = Reconstruction()) -> np.ndarray:
    """Blur, noise and quantise a painted HU volume (see :func:`render_ct`); ``hu`` is not modified.

    Shape:
        hu: ``(D, H, W)`` float32; returns ``(D, H, W)`` int16.
    """
    sigma_xy = anatomy.blur_vox * recon.blur_factor()
    sigma_z = sigma_xy * min(1.0, grid.spacing[1] / grid.spacing[0] * 1.5)
    hu = ndimage.gaussian_filter(hu, (sigma_z, sigma_xy, sigma_xy), truncate=2.5)
    rng = np.random.default_rng(noise_seed)
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    noise *= np.float32(anatomy.noise_hu * recon.noise_factor())  # in place: the same float32 operations
    hu += noise
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    return hu.astype(np.int16)


def xray_grid(anatomy: Anatomy, render: int) -> Grid:
    """The grid a radiograph of ``render`` x ``render`` pixels is projected from (centred on the chest)."""
    sp = XRAY_FOV_MM / render
    depth = max(8, int(render * XRAY_DEPTH_SAMPLES))
    return Grid.centred((render, depth, render), (sp, 320.0 / depth, sp), (anatomy.shift[0] + 10.0, anatomy.shift[1],
                                                                          anatomy.shift[2]))


def project(hu: np.ndarray, spacing_y: float) -> np.ndarray:
    """Line integrals of linear attenuation along the antero-posterior axis.

    Attenuation is relative to water (1 + HU/1000), with bone and metal boosted for their
    photoelectric absorption at radiographic energies.

    Shape:
        hu: ``(D, H, W)``; returns ``(D, W)`` in water-equivalent mm.
    """
    # slabs of PROJECT_SLAB z-rows: the sum over y adds the rows of one z in order either way, and the temporaries
    # stay small enough to be reused instead of mapped afresh for every radiograph
    return np.concatenate([_attenuation(hu[i:i + PROJECT_SLAB]).sum(axis=1)
                           for i in range(0, hu.shape[0], PROJECT_SLAB)]) * spacing_y


def _attenuation(hu: np.ndarray) -> np.ndarray:
    """``max(1 + hu / 1000, 0) + 0.35 * max(hu - 150, 0) / 1000`` (in-place steps, the same operations)."""
    mu = hu / 1000.0
    mu += 1.0
    np.maximum(mu, 0.0, out=mu)
    bone = hu - 150.0
    np.maximum(bone, 0.0, out=bone)
    bone *= 0.35 / 1000.0
    mu += bone
    return mu


def metal_path(shapes: list[Shape], grid: Grid) -> np.ndarray:
    """Metal thickness along the antero-posterior axis, from the filled fraction of each voxel.

    CT clips metal at 3071 HU, but a radiograph's beam is stopped by it (steel at 60 keV attenuates ~45
    times water): devices are painted alone on an empty grid and their thickness is returned, so the
    caller can add ``METAL_MU`` water-equivalent mm per mm of metal, independent of the coarse depth grid.

    Shape:
        returns ``(D, W)`` in mm.
    """
    canvas = Canvas(grid)
    for shape in shapes:
        canvas.paint(replace(shape, value=0.0, within=None, tissue=None))
    return (canvas.hu + 1000.0).sum(axis=1) * (grid.spacing[1] / 1000.0)


def render_xray(anatomy: Anatomy, lesions: Iterable[Lesion], size: int, render: int, noise_seed: int,
                exclude: Iterable[str] = ()) -> np.ndarray:
    """A frontal (PA-like) radiograph as an 8-bit image, patient's right on the image's left.

    The projection is windowed like a processed radiograph (log domain, fixed gain), blurred
    by the detector and given quantum noise.

    Returns:
        ``(size, size)`` uint8, row 0 at the top (cranial).
    """
    lesions = list(lesions)
    grid = xray_grid(anatomy, render)
    canvas = paint_patient(anatomy, lesions, grid, exclude)
    for shape in arm_shapes(anatomy):  # arms hang beside the chest on a radiograph (raised for CT)
        canvas.paint(shape)
    line = project(canvas.hu, grid.spacing[1])
    skip = set(exclude)
    metal = [shape for lesion in lesions if lesion.label not in skip for shape in lesion.shapes
             if shape.value >= METAL_HU]
    if metal:
        line = line + (METAL_MU - 1.0) * metal_path(metal, grid)
    img = line[::-1, ::-1]  # superior at the top; larger x (patient's right) on the left
    if size != render:
        img = ndimage.zoom(img, size / render, order=1)
    px = XRAY_FOV_MM / size
    img = ndimage.gaussian_filter(img, 0.8 / px)  # detector and focal-spot blur (~0.8 mm)
    rng = np.random.default_rng(noise_seed)
    img = img + rng.normal(0, 2.0, img.shape)
    # processed-radiograph look: log-domain window plus unsharp masking (local contrast enhancement)
    img = img + 0.8 * (img - ndimage.gaussian_filter(img, 25.0 / px))
    v = np.clip(img / 320.0, 0.0, 1.0) ** 0.9
    return np.rint(v * 255).astype(np.uint8)


def arm_shapes(a: Anatomy) -> list[Shape]:
    """Upper arms beside the chest (soft tissue around a humerus), for radiographs only."""
    sz, sy, sx = a.shift
    out: list[Shape] = []
    for side in (1, -1):
        c = (sz + a.apex - 60, sy - 10, sx + side * (a.body_ax + 28))
        out.append(Ellipsoid(c, (140, 40, 34), 40, Tissue.SOFT, within=(Tissue.AIR,)))
        out.append(Ellipsoid((c[0] + 10, c[1], c[2] - side * 5), (130, 11, 11), 700, Tissue.BONE))
        out.append(Ellipsoid((sz + a.apex + 15, c[1], c[2] - side * 18), (24, 24, 24), 450, Tissue.BONE))
    return out
