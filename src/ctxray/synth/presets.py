"""Size presets of the synthetic world: how many CT volumes and radiographs, and their grids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Findings = Literal["linked", "independent"]
Nodules = Literal["ct", "visible"]


@dataclass(frozen=True)
class Preset:
    """Sizes of one synthetic world.

    Args:
        name: preset name.
        n_train: CT volumes in the train split (reconstructions counted separately).
        n_valid: CT volumes in the valid split.
        ct_shape: CT grid ``(D, H, W)``.
        ct_spacing: CT voxel spacing ``(sz, sy, sx)`` in mm.
        n_xray: radiographs in the gallery (one per X-ray subject).
        xray_size: side of the square PNG in pixels.
        xray_render: side of the square grid the radiograph is projected on before resizing.
        findings: ``"linked"`` (the world's label model: shared latent causes and cause -> effect links, so
            findings co-occur as they do in patients) or ``"independent"`` (every label drawn on its own with
            the same marginal prevalence: no finding predicts another, so a classifier can only score a label
            from its own lesion; the validation world of the pointing game, issue 14).
        nodules: ``"ct"`` (CT-sized nodules, 4-30 mm, median about 8 mm) or ``"visible"`` (the X-ray gallery's
            nodules on CT too: twice the size and at least 12 mm, median about 16 mm, so that a nodule covers a
            few voxels of a 10 mm-slice grid).
    """

    name: str
    n_train: int
    n_valid: int
    ct_shape: tuple[int, int, int]
    ct_spacing: tuple[float, float, float]
    n_xray: int
    xray_size: int
    xray_render: int
    findings: Findings = "linked"
    nodules: Nodules = "ct"


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 160, 60, (32, 64, 64), (10.0, 5.4, 5.4), 80, 64, 64),
    # the world of `ctxray demo --preset tiny` (the smoke run): tiny's grids with twice the training volumes and
    # 240 validation volumes, so that its zero-shot macro AUROC is measured, not drawn: on tiny's 60 (4-9
    # positives a label) one run's figure has an SD of ~0.04 and the same recipe scored 0.58-0.65 by seed
    "smoke": Preset("smoke", 320, 240, (32, 64, 64), (10.0, 5.4, 5.4), 80, 64, 64),
    # demo: 10 radiographs per CT train volume, projected at 128 (the expert is trained at 128 too)
    "demo": Preset("demo", 400, 100, (64, 128, 128), (5.0, 2.7, 2.7), 4000, 128, 128),
    "bench": Preset("bench", 2000, 500, (96, 192, 192), (3.3, 1.8, 1.8), 20000, 256, 128),
    # the powered ablation (bench/ablation/powered.py): CT on the grid it trains at (the ``small`` spec), 1,000
    # validation volumes so a 0.03 difference in macro AUROC is not lost in the noise, a gallery 10x the
    # largest pair count (400) projected at 128 px
    "ablation": Preset("ablation", 400, 1000, (32, 64, 64), (10.0, 5.4, 5.4), 4000, 128, 128),
    # the ablation world with 4,000 training volumes (its first 400 and its validation split are the ablation
    # world's, byte for byte: patients are seeded by number): the supervised ceiling with all of them is the
    # headroom the pairs grid sits under (bench/headroom.py: 0.882 macro, every label > 0.7, vs 0.794 at 400)
    "headroom": Preset("headroom", 4000, 1000, (32, 64, 64), (10.0, 5.4, 5.4), 4000, 128, 128),
    # the pointing game's validation world (issue 14): tiny's grids, findings independent of each other and
    # nodules large enough to be seen, so a supervised classifier must find each label's own lesion
    "pointing": Preset("pointing", 160, 60, (32, 64, 64), (10.0, 5.4, 5.4), 80, 64, 64, findings="independent",
                       nodules="visible"),
    # the same on the demo world's CT grid (twice as fine per axis): whether a reference that sees nodules and ground
    # glass at 32x64x64 only as one or two voxels finds them, and its maps with them, on a finer grid
    "pointing_fine": Preset("pointing_fine", 160, 60, (64, 128, 128), (5.0, 2.7, 2.7), 80, 64, 64,
                            findings="independent", nodules="visible"),
}


def get_preset(name: str) -> Preset:
    """Look up a preset by name.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown synth preset {name!r}; choose one of {sorted(PRESETS)}") from None
