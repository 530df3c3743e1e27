"""Does a scan look like a chest CT? A coarse field-of-view check run by ``predict`` before it answers.

A chest model asked about a head, an abdomen or a hand still returns 18 probabilities; this check says
when the answer is about the wrong body region. It measures, on the RAS HU volume:

* ``lung_fraction``: in the middle third of the slices, the share of non-air voxels (HU > -950) whose HU
  are in the lung range [-950, -500]. Lungs fill a large part of a chest there (0.26-0.53 on the
  synthetic world's chests; not yet measured on real scans); a head or a limb has next to none.
* ``z_extent_mm``: the scanned length; a chest CT covers about 200-400 mm.
* ``in_plane_mm``: the smaller in-plane field of view; under 160 mm is a limb or a tight crop, not a chest
  (a targeted lung reconstruction of 200 mm still passes).

Each failed criterion adds a plain-language warning; ``chest_like`` is False when any is present. The
thresholds are loose on purpose (a warning, never a refusal): they catch the wrong body region, not a
subtle protocol difference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

LUNG_HU = (-950.0, -500.0)
MIN_LUNG_FRACTION = 0.08
Z_EXTENT_MM = (120.0, 700.0)
MIN_IN_PLANE_MM = 160.0


@dataclass
class FovCheck:
    """The measures and the warnings (empty when the scan looks like a chest CT)."""

    lung_fraction: float
    z_extent_mm: float
    in_plane_mm: float
    warnings: list[str] = field(default_factory=list)

    @property
    def chest_like(self) -> bool:
        return not self.warnings

    def to_dict(self) -> dict:
        return {**asdict(self), "chest_like": self.chest_like}


def chest_fov_check(hu: np.ndarray, spacing_zyx: tuple[float, float, float]) -> FovCheck:
    """Measure whether ``hu`` looks like a chest CT (see the module docstring).

    Shape:
        hu: (D, H, W) HU on the RAS grid.
    """
    d, h, w = hu.shape
    sz, sy, sx = (float(s) for s in spacing_zyx)
    mid = np.asarray(hu[d // 3 : max(d // 3 + 1, (2 * d) // 3)], dtype=np.float32)
    tissue = mid > LUNG_HU[0]
    lung = tissue & (mid <= LUNG_HU[1])
    frac = float(lung.sum() / max(int(tissue.sum()), 1))
    z_mm, plane_mm = d * sz, min(h * sy, w * sx)
    check = FovCheck(round(frac, 4), round(z_mm, 1), round(plane_mm, 1))
    if frac < MIN_LUNG_FRACTION:
        check.warnings.append(f"no lungs found in the middle of the scan (lung-range voxels {frac:.1%} of the body, "
                              f"a chest CT has over {MIN_LUNG_FRACTION:.0%}): this may not be a chest CT")
    if not Z_EXTENT_MM[0] <= z_mm <= Z_EXTENT_MM[1]:
        check.warnings.append(f"scan length {z_mm:.0f} mm is outside the {Z_EXTENT_MM[0]:.0f}-{Z_EXTENT_MM[1]:.0f} mm "
                              "of a chest CT")
    if plane_mm < MIN_IN_PLANE_MM:
        check.warnings.append(f"in-plane field of view {plane_mm:.0f} mm is smaller than a chest "
                              f"(> {MIN_IN_PLANE_MM:.0f} mm)")
    return check
