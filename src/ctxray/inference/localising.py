"""A classifier that is localisable by design: per-location logits on a fine grid, pooled by log-sum-exp.

The reference model of issue 14 that the explanation methods are validated on. A ResNet classifier that
global-average-pools its last stage (1x2x2 at 32x64x64) and then applies a linear head can decide from
anything in the volume (co-occurring findings, the volume's statistics) and has no grid to point with.
This one stops the ResNet at an early stage (``stem_stride=(1, 2, 2)`` and one stage: a 16x16x16 grid at
32x64x64, cells of 20 x 22 x 22 mm on the ``small`` spec), applies a 1x1x1 convolution there (one logit
per label and location), and pools the locations by log-sum-exp (``sharpness`` r):

    logit_l = (1 / r) * log(mean_xyz exp(r * s_l(xyz)))

which lies between the mean (r -> 0) and the maximum (r -> inf) of the location logits ``s_l``. A positive
label must then be carried by the few locations that dominate the pool, and those are what its map shows:
Grad-CAM on the head's stage is exactly the class activation map ``relu(s_l - b_l)`` (the head is linear
per location, so the channel weights are the head's weights up to a constant), HiResCAM weights it by
each location's share of the pool. Pooling by the maximum of a receptive field this small is the
weakly-supervised localisation of multiple-instance learning (Pinheiro and Collobert 2015, LSE pooling).
It makes localisation possible, not certain: the cells that carry a label can still be those of a co-occurring
finding, and which ones they are varied with the seed and the number of epochs at equal AUROC (README,
"Pointing game"), so a trained model's maps are trusted only after the pointing game.

Why they varied: a ResNet cell's receptive field is far larger than the cell (at 32x64x64 on 10 mm slices
the stem and two blocks see about 43 voxels, i.e. the whole 320 mm of the scan along z), so the cell that
carries a finding need not be the lesion's cell. ``patch=(pd, ph, pw)`` bounds it by construction
(:class:`PatchEncoder`): each cell's features are computed from its own patch of the input plus a few voxels
on each side and nothing else, so a cell can only score what lies within that box.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ctxray.models.resnet3d import Norm, ResNet3D, _norm

log = logging.getLogger(__name__)


class PatchEncoder(nn.Module):
    """Per-cell features from the cell and a thin shell of context only: a receptive field bounded by construction.

    Three 3x3x3 convolutions on the whole input (strides (1, 2, 2), (2, 2, 2), 1), then a max over each cell of
    ``patch`` voxels. A cell's features depend on the input inside the cell plus at most 4 voxels on each side
    along z and 7 along y and x (the convolutions' reach), and on nothing else: at 32x64x64 on 10 x 5.4 x 5.4 mm, a
    cell of 4x8x8 voxels (40 x 43 x 43 mm) sees a box of 120 x 119 x 119 mm, where the ResNet stages' cells
    see the whole scan.

    Args:
        input_shape: ``(D, H, W)``, each a multiple of ``patch``.
        patch: cell size in voxels (``pd`` even, ``ph`` and ``pw`` multiples of 4).
        widths: channels of the first and of the last two convolutions.
        norm: ``"batch"`` (per-voxel in eval mode) or ``"group"``/``"instance"``.

    Shape:
        forward: (B, 1, D, H, W) -> (B, widths[-1], D / pd, H / ph, W / pw).
    """

    n_stages = 1
    explain_stage = 1
    reach = (4, 7, 7)  # voxels of context on each side of a cell (see the class docstring)

    def __init__(self, input_shape: Sequence[int], patch: Sequence[int], widths: Sequence[int] = (8, 16),
                 norm: Norm = "batch") -> None:
        super().__init__()
        self.input_shape, self.patch = tuple(input_shape), tuple(int(p) for p in patch)
        pd, ph, pw = self.patch
        uneven = any(n % p for n, p in zip(self.input_shape, self.patch))
        if len(self.patch) != 3 or uneven or pd % 2 or ph % 4 or pw % 4:
            raise ValueError(f"PatchEncoder: input_shape {self.input_shape} must be a multiple of patch {self.patch} "
                             "(3 values: pd even, ph and pw multiples of 4)")
        c0, c1 = int(widths[0]), int(widths[-1])
        self.net = nn.Sequential(
            nn.Conv3d(1, c0, 3, stride=(1, 2, 2), padding=1, bias=False), _norm(norm, c0), nn.ReLU(inplace=True),
            nn.Conv3d(c0, c1, 3, stride=2, padding=1, bias=False), _norm(norm, c1), nn.ReLU(inplace=True),
            nn.Conv3d(c1, c1, 3, padding=1, bias=False), _norm(norm, c1), nn.ReLU(inplace=True),
            nn.MaxPool3d((pd // 2, ph // 4, pw // 4)),
        )
        self.out_dim = c1

    def stage_grid(self, shape: Sequence[int], stage: int | None = None) -> tuple[int, int, int]:
        return tuple(int(n) // p for n, p in zip(shape, self.patch))  # type: ignore[return-value]

    def stage_channels(self, stage: int | None = None) -> int:
        return self.out_dim

    def feature_module(self, stage: int | None = None) -> nn.Module:
        return self

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LocalisingClassifier(nn.Module):
    """ResNet stages up to a fine grid, a per-location linear head, log-sum-exp pooling.

    Args:
        n_labels: logits per volume.
        input_shape: expected ``(D, H, W)``.
        layers, widths: blocks and channels of the ResNet stages kept (the head reads the last).
        stem_width: channels of the stem convolution.
        stem_stride: stride of the stem convolution per axis (``(1, 2, 2)`` keeps the slices of a thick-slice
            scan).
        norm: ``"batch"`` (default: per-voxel in eval mode, so a location's logit depends on its receptive
            field only), ``"group"`` or ``"instance"`` (these normalise by the whole volume's statistics).
        sharpness: r of the pooling.
        patch: cells of a :class:`PatchEncoder` (receptive field bounded to the cell and a few voxels around it)
            instead of the ResNet stages (``layers``, ``stem_width`` and ``stem_stride`` are then unused).

    Shape:
        forward: (B, 1, D, H, W) -> (B, n_labels); logit_map: -> (B, n_labels, d, h, w).
    """

    def __init__(self, n_labels: int, input_shape: Sequence[int], layers: Sequence[int] = (2,),
                 widths: Sequence[int] = (32,), stem_width: int = 16, stem_stride: int | Sequence[int] = (1, 2, 2),
                 norm: Norm = "batch", sharpness: float = 5.0, patch: Sequence[int] | None = None) -> None:
        super().__init__()
        if sharpness <= 0:
            raise ValueError(f"LocalisingClassifier: sharpness must be positive; got {sharpness}")
        if patch is not None:
            self.encoder: nn.Module = PatchEncoder(input_shape, patch, widths, norm)
        else:
            self.encoder = ResNet3D(input_shape=input_shape, layers=layers, widths=widths, stem_width=stem_width,
                                    stem_stride=stem_stride, norm=norm)
        self.head = nn.Conv3d(int(widths[-1]), int(n_labels), 1)
        self.sharpness = float(sharpness)
        self.explain_stage = self.encoder.n_stages  # relevance maps read the head's input

    # the stage interface of ctxray.inference.heatmap (hooks attach to the encoder's stages)
    def feature_module(self, stage: int | None = None) -> nn.Module:
        return self.encoder.feature_module(stage)

    def stage_grid(self, shape: Sequence[int], stage: int | None = None) -> tuple[int, int, int]:
        return self.encoder.stage_grid(shape, stage)

    def stage_channels(self, stage: int | None = None) -> int:
        return self.encoder.stage_channels(stage)

    def logit_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-location logits. Shape: (B, 1, D, H, W) -> (B, n_labels, d, h, w)."""
        return self.head(self.encoder.feature_map(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, 1, D, H, W) -> (B, n_labels)."""
        return self.pool(self.logit_map(x))

    def pool(self, logit_map: torch.Tensor) -> torch.Tensor:
        """Log-sum-exp pooling of per-location logits. Shape: (B, n_labels, d, h, w) -> (B, n_labels)."""
        s = logit_map.flatten(2)  # (B, L, d*h*w)
        r = self.sharpness
        return (torch.logsumexp(r * s, dim=-1) - math.log(s.shape[-1])) / r

    def side_pools(self, logit_map: torch.Tensor) -> torch.Tensor:
        """The same pooling over the patient's left and over the right half of the grid.

        The array's last axis is x, which grows toward the patient's right (RAS), so the left half is the lower
        indices; with an odd width the middle column belongs to neither.

        Shape:
            (B, n_labels, d, h, w) -> (B, n_labels, 2): [..., 0] left, [..., 1] right.
        """
        w = logit_map.shape[-1]
        return torch.stack([self.pool(logit_map[..., : w // 2]), self.pool(logit_map[..., (w + 1) // 2:])], dim=-1)


def mirror_batch(batch: dict[str, Any], which: torch.Tensor) -> dict[str, Any]:
    """The batch with the volumes ``which`` mirrored left to right: the volume and its ``cells`` flipped on x (the
    last axis) and its report ``sides`` swapped; labels unchanged. The batch itself is not modified.

    Shape:
        which: (B,) bool
    """
    out = dict(batch)
    if not bool(which.any()):
        return out
    for key in ("volume", "cells", "sides"):  # x is the last axis; sides (L, 2): [left, right] -> [right, left]
        if key in out:
            t = out[key].clone()
            t[which] = t[which].flip(-1)
            out[key] = t
    return out


def mirrored_side_probs(net: nn.Module, volume: torch.Tensor) -> torch.Tensor:
    """Side probabilities averaged over the volume and its mirror image (sides swapped back): a reading that
    cannot favour one side for a symmetric scan.

    Shape:
        volume: (B, 1, D, H, W) -> (B, n_labels, 2): [..., 0] left, [..., 1] right.
    """
    p = torch.sigmoid(net.side_pools(net.logit_map(volume)))
    q = torch.sigmoid(net.side_pools(net.logit_map(volume.flip(-1)))).flip(-1)
    return (p + q) / 2


def report_side_targets(reports: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Per report and label, whether the report puts the finding on the patient's left and on the right.

    Read by the CT labeler (``ctxray.generate.plan.plans_from_reports``: positive and hedged mentions and their
    side words; ``bilateral`` is both sides): a label the report states without naming a side is unknown on both
    sides (NaN); a label it negates or never mentions is 0 on both. The targets of :func:`fit`'s ``side_weight``:
    where a finding is, as far as the reports say, with no lesion positions.

    Shape:
        returns (N, L, 2) float32, [..., 0] left, [..., 1] right.
    """
    from ctxray.generate.plan import plan_matrix, plans_from_reports, side_targets

    plans = plans_from_reports(reports)
    out = side_targets(plans, names).astype(np.float32)
    out[plan_matrix(plans, names) == 0] = 0.0  # negated or never mentioned: on neither side
    return out


def side_set_of(probs: np.ndarray) -> frozenset[str]:
    """The sides a present finding is read on from its left and right probabilities ``(2,)``: both where both
    reach 0.5, else the likelier (the planned generator's side rule, ``ctxray.generate.plan.side_word``)."""
    from ctxray.generate.plan import side_set, side_word

    return side_set(side_word(probs))


def prior_sides(targets: np.ndarray, names: Sequence[str]) -> dict[str, frozenset[str]]:
    """Per label, the side set of the training reports' side rates alone (the baseline a side readout must beat):
    the same rule on the share of the reports giving the label a side that name the left and the right (both
    where each is at least half, else the commoner); labels no report gives a side are left out.

    Shape:
        targets: (N, L, 2) from :func:`report_side_targets`
    """
    out: dict[str, frozenset[str]] = {}
    for j, name in enumerate(names):
        t = targets[:, j]
        t = t[~np.isnan(t).any(axis=1) & (t.sum(axis=1) > 0)]
        if len(t):
            out[name] = side_set_of(t.mean(axis=0))
    return out


def side_agreement(probs: np.ndarray, truths: Sequence[dict[str, frozenset[str]]], names: Sequence[str],
                   prior: dict[str, frozenset[str]]) -> dict[str, Any]:
    """Sides read from the left and right pools against the ground truth, the findings taken as known.

    Args:
        probs: (N, L, 2) sigmoid of :meth:`LocalisingClassifier.side_pools` per volume.
        truths: per volume, label -> the sides of its lesions (``ctxray.generate.checks.truth_sides``).
        prior: :func:`prior_sides` of the training reports; only labels in it are scored.

    Returns:
        ``{"n", "exact", "prior_exact", "per_label": {label: {"n", "hits", "prior_hits"}}, "one_side": {"n",
        "auroc"}}`` (shares NaN when n is 0); ``one_side`` ranks the findings on one side only by right minus left
        probability, threshold-free (0.5: the pools do not know the side).
    """
    from ctxray.generate.checks import side_hits_summary
    from ctxray.metrics import auroc_per_label

    if len(truths) != len(probs):
        raise ValueError(f"{len(probs)} volumes but {len(truths)} ground-truth records")
    index = {n: j for j, n in enumerate(names)}
    per: dict[str, list[tuple[bool, bool]]] = {}
    lean, is_right = [], []
    for i, truth in enumerate(truths):
        for label, sides in truth.items():
            if label in prior and label in index:
                p = probs[i, index[label]]
                per.setdefault(label, []).append((side_set_of(p) == sides, prior[label] == sides))
                if len(sides) == 1:
                    lean.append(float(p[1] - p[0]))
                    is_right.append(float("right" in sides))
    both = 0 < sum(is_right) < len(is_right)
    auroc = float(auroc_per_label(np.array(is_right)[:, None], np.array(lean)[:, None])[0]) if both else float("nan")
    return {**side_hits_summary(per), "one_side": {"n": len(lean), "auroc": auroc}}


def fit(net: nn.Module, dataset: Any, epochs: int, lr: float, batch_size: int, seed: int,
        weight_decay: float = 1e-4, cell_weight: float = 0.0, side_weight: float = 0.0,
        mirror: float = 0.0) -> nn.Module:
    """Train ``net`` (volumes -> logits) with masked binary cross-entropy, AdamW, no decay on 1-D parameters.

    Args:
        dataset: items ``{"volume": (1, D, H, W), "labels": (L,)}`` (NaN: unknown); with ``cell_weight`` also
            ``"cells"`` (L, d, h, w): where each label's lesions are on the net's logit map
            (``ctxray.inference.pointing.cell_targets``); with ``side_weight`` also ``"sides"`` (L, 2): whether
            the report puts each finding on the left and on the right (:func:`report_side_targets`).
        cell_weight: weight of :func:`ctxray.losses.balanced_cell_bce` on ``net.logit_map`` (0: labels only).
        side_weight: weight of the masked cross-entropy of ``net.side_pools`` against ``"sides"``: each half of
            the grid is a bag that holds the finding or not (multiple-instance learning on the report's sides).
        mirror: probability that a training volume is seen mirrored left to right (:func:`mirror_batch`: its
            ``sides`` swapped and its ``cells`` mirrored), so a side has to be read from where the finding is, not
            from which side the training reports name more often.

    Returns:
        ``net`` in eval mode.
    """
    from ctxray.evaluate.finetune import _loader, masked_bce
    from ctxray.losses import balanced_cell_bce

    torch.manual_seed(seed)
    flips = torch.Generator().manual_seed(seed + 7919)  # its own stream: mirror=0 leaves the training unchanged
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps = epochs * math.ceil(len(dataset) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    net.train()
    for epoch in range(epochs):
        t0, losses = time.perf_counter(), []
        for batch in _loader(dataset, batch_size, shuffle=True, seed=seed + epoch):
            if mirror > 0:
                batch = mirror_batch(batch, torch.rand(len(batch["volume"]), generator=flips) < mirror)
            if cell_weight > 0 or side_weight > 0:
                cell_map = net.logit_map(batch["volume"])
                loss = masked_bce(net.pool(cell_map), batch["labels"].float())
                if cell_weight > 0:
                    loss = loss + cell_weight * balanced_cell_bce(cell_map, batch["cells"].float())
                if side_weight > 0:
                    loss = loss + side_weight * masked_bce(net.side_pools(cell_map).flatten(1),
                                                           batch["sides"].float().flatten(1))
            else:
                loss = masked_bce(net(batch["volume"]), batch["labels"].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        log.info("epoch %d/%d: loss %.4f (%.0f s)", epoch + 1, epochs, float(np.mean(losses)),
                 time.perf_counter() - t0)
    return net.eval()
