"""The canvas's shortcuts give bit for bit what the plain whole-box computations give."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ctxray.synth import canvas as canvas_module
from ctxray.synth.atlas import _taxicab_depth
from ctxray.synth.canvas import Canvas, Ellipsoid, Grid, Tissue
from ctxray.synth.canvas_ops import row_limits, tissue_in


def test_row_limits_are_the_exact_float32_thresholds() -> None:
    rng = np.random.default_rng(0)
    s_z = np.concatenate([rng.random(20000), 1 - rng.random(5000) * 1e-3, rng.random(5000) * 1e-6,
                          rng.random(100) * 1e-35, [0.0, 1.0, 0.5, 1 - 2**-24, 2**-24, 2**-25]]).astype(np.float32)
    t = row_limits(s_z)
    one = np.float32(1.0)
    assert ((s_z + t) <= one).all()  # t fits ...
    assert ((s_z + np.nextafter(t, np.float32(2.0))) > one).all()  # ... and the next float32 does not
    s = rng.random((len(s_z), 8)).astype(np.float32) ** 8  # many values near 0 and near 1
    assert np.array_equal((s_z[:, None] + s) <= one, s <= t[:, None])


def test_tissue_in_matches_a_lookup_table() -> None:
    ts = np.random.default_rng(1).integers(0, 14, (7, 9, 11)).astype(np.uint8)
    for within in [(3,), (1, 3, 4), (0, 2, 5, 13)]:
        lut = np.zeros(256, dtype=bool)
        lut[list(within)] = True
        assert np.array_equal(tissue_in(ts, within), lut[ts])


def _dense(canvas: Canvas, e: Ellipsoid) -> None:
    """Paint with the general path only (every voxel of the box)."""
    rxy = max(e.radii[1], e.radii[2]) * (1.42 if e.power > 2 else 1.0) + e.edge
    box = canvas._box(e.centre, (e.radii[0] + e.edge, rxy, rxy))
    if box is None:
        return
    z = canvas._axes[0][box[0]] - np.float32(e.centre[0])
    y = canvas._axes[1][box[1]][:, None] - np.float32(e.centre[1])
    x = canvas._axes[2][box[2]][None, :] - np.float32(e.centre[2])
    c, sn = np.float32(np.cos(e.rot)), np.float32(np.sin(e.rot))
    xr, yr = (x, y) if not e.rot else (c * x + sn * y, -sn * x + c * y)
    s_xy = np.abs(yr / e.radii[1]) ** e.power + np.abs(xr / e.radii[2]) ** e.power
    canvas._ellipsoid_dense(e, box, z, y, x, s_xy, np.abs(z / e.radii[0]) ** e.power)


@pytest.mark.parametrize("seed", range(6))
def test_ellipsoid_shortcuts_equal_the_dense_path(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canvas_module, "SMALL_BOX", 0)  # every box takes the shortcuts
    rng = np.random.default_rng(seed)
    grid = Grid.centred((40, 20, 44), (5.0, 9.0, 4.5))
    fast, dense = Canvas(grid), Canvas(grid)
    for _ in range(40):
        radii = tuple(float(r) for r in rng.uniform(5, 120, 3))
        normal = (float(rng.choice([1.0, -1.0])), 0.0, 0.0)
        plane = None if rng.random() < 0.4 else (normal, float(rng.uniform(-80, 80)))
        e = Ellipsoid(tuple(float(c) for c in rng.uniform(-60, 60, 3)), radii, float(rng.uniform(-900, 900)),
                      int(rng.integers(1, 6)), within=None if rng.random() < 0.5 else (int(Tissue.AIR), 2, 3),
                      rot=float(rng.uniform(-1, 1)) if rng.random() < 0.3 else 0.0,
                      power=float(rng.choice([2.0, 2.2, 3.0])), edge=float(rng.choice([0.0, 0.0, 2.0])),
                      plane=plane, add=bool(rng.random() < 0.2))
        fast.paint(e)
        _dense(dense, e)
        assert fast.hu.tobytes() == dense.hu.tobytes() and fast.tissue.tobytes() == dense.tissue.tobytes()


def test_taxicab_depth_matches_the_whole_grid_transform() -> None:
    rng = np.random.default_rng(1)
    for _ in range(100):
        shape = tuple(int(v) for v in rng.integers(3, 16, 3))
        mask = np.zeros(shape, bool)
        for _ in range(int(rng.integers(0, 4))):
            c, r = rng.integers(0, shape), rng.integers(1, 7, 3)
            mask[tuple(slice(max(int(a - b), 0), int(a + b)) for a, b in zip(c, r))] = True
        mask &= rng.random(shape) < 0.97
        want = ndimage.distance_transform_cdt(mask, metric="taxicab")
        got = _taxicab_depth(mask)
        assert got.dtype == want.dtype and np.array_equal(got, want)
