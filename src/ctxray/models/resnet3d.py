"""3D ResNet volume encoder (basic residual blocks, ResNet-18 layout and smaller variants).

GroupNorm by default (batch statistics are unreliable at the small per-device batches 3D training uses, and
they differ across DDP ranks); BatchNorm and InstanceNorm are options. The stem is a strided 3D convolution
plus max-pooling; stages 2-4 halve the resolution, so the feature map is 1/32 of the input per axis (with
the default ``stem_stride=2``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctxray.models.registry import VolumeEncoder, check_input_shape, register_encoder

__all__ = ["ResNet3D", "resnet3d_18", "resnet3d_small", "resnet3d_tiny"]

Norm = Literal["group", "batch", "instance"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=True)


class BasicBlock3D(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: Norm) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(norm, c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _norm(norm, c_out)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, c_in, d, h, w) -> (B, c_out, d/stride, h/stride, w/stride)."""
        y = self.act(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.act(y + self.shortcut(x))


class ResNet3D(VolumeEncoder):
    """3D ResNet encoder.

    Args:
        input_shape: expected ``(D, H, W)`` (validated; any shape at least ``min_input`` works at run time).
        layers: blocks per stage (ResNet-18: ``(2, 2, 2, 2)``).
        widths: channels per stage (same length as ``layers``).
        stem_width: channels of the stem convolution.
        stem_stride: stride of the stem convolution per axis (1 or 2 each; use ``(1, 2, 2)`` for thick slices).
        norm: ``"group"``, ``"batch"`` or ``"instance"``.
        grad_checkpointing: recompute each stage's activations in backward (training only).

    Shape:
        forward: (B, 1, D, H, W) float in [0, 1] -> (B, widths[-1]);
        feature_map: -> (B, widths[-1], ~D/s, ~H/s, ~W/s), s = stem_stride * 2 ** len(layers).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (48, 96, 96),
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_width: int | None = None,
        stem_stride: int | Sequence[int] = 2,
        norm: Norm = "group",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.input_shape = check_input_shape(input_shape, name)
        if len(layers) != len(widths) or not layers or min(layers) < 1 or min(widths) < 1:
            raise ValueError(
                f"{name}: layers {tuple(layers)} and widths {tuple(widths)} must be non-empty, equally long, positive"
            )
        if norm not in ("group", "batch", "instance"):
            raise ValueError(f"{name}: norm must be 'group', 'batch' or 'instance'; got {norm!r}")
        stride = (stem_stride,) * 3 if isinstance(stem_stride, int) else tuple(stem_stride)
        if len(stride) != 3 or any(s not in (1, 2) for s in stride):
            raise ValueError(f"{name}: stem_stride must be 1 or 2 per axis; got {stem_stride!r}")
        self.stem_stride = stride
        self.n_stages = len(layers)
        if norm == "instance" and math.prod(self.feature_grid(self.input_shape)) == 1:
            raise ValueError(
                f"{name}: norm='instance' needs more than one voxel in the last feature map, but input_shape "
                f"{self.input_shape} gives {self.feature_grid(self.input_shape)}; use a larger input or norm='group'"
            )
        stem_width = stem_width or widths[0]
        self.out_dim = self.feature_dim = int(widths[-1])
        self.grad_checkpointing = bool(grad_checkpointing)
        self.stem = nn.Sequential(
            nn.Conv3d(1, stem_width, 7, stride=stride, padding=3, bias=False),
            _norm(norm, stem_width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages, c_in = [], stem_width
        for i, (n, c) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock3D(c_in, c, 1 if i == 0 else 2, norm)]
            blocks += [BasicBlock3D(c, c, 1, norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c
        self.stages = nn.ModuleList(stages)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Spatial size ``(d, h, w)`` of ``feature_map`` for an input of shape ``(D, H, W)``."""
        out = []
        for n, s in zip(shape, self.stem_stride):
            n = math.ceil(n / s)  # stem convolution (kernel 7, padding 3)
            for _ in range(self.n_stages):  # max-pool, then the stride-2 stages
                n = math.ceil(n / 2)
            out.append(n)
        return tuple(out)  # type: ignore[return-value]

    explain_stage = 1  # the stage relevance maps use by default (ctxray.inference.heatmap)

    def _stage_index(self, stage: int | None) -> int:
        """``stage`` as 0 (stem, after max-pool) .. n_stages (last); None or -1 is the last."""
        k = self.n_stages if stage is None or stage == -1 else int(stage)
        if not 0 <= k <= self.n_stages:
            raise ValueError(f"{type(self).__name__}: stage must be 0 (stem) .. {self.n_stages} or None; got {stage}")
        return k

    def feature_module(self, stage: int | None = None) -> nn.Module:
        """The module whose output is ``feature_map(x, stage)`` (what explanation hooks attach to).

        Stage 0 is the stem (after its max-pool), 1 .. n the residual stages; None is the last.
        """
        k = self._stage_index(stage)
        return self.stem if k == 0 else self.stages[k - 1]

    def stage_grid(self, shape: Sequence[int], stage: int | None = None) -> tuple[int, int, int]:
        """Spatial size of ``feature_map(x, stage)`` for an input of shape ``(D, H, W)``."""
        k = self._stage_index(stage)
        out = []
        for n, s in zip(shape, self.stem_stride):
            n = math.ceil(math.ceil(n / s) / 2)  # stem convolution, then max-pool (stage 0 and stage 1)
            for _ in range(max(0, k - 1)):  # the stride-2 stages
                n = math.ceil(n / 2)
            out.append(n)
        return tuple(out)  # type: ignore[return-value]

    def stage_channels(self, stage: int | None = None) -> int:
        """Channels of ``feature_map(x, stage)``."""
        k = self._stage_index(stage)
        return int(self.stem[0].out_channels if k == 0 else self.stages[k - 1][-1].conv2.out_channels)

    def feature_map(self, x: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        """Features of one stage (the last by default; ``forward`` pools the last).

        Args:
            stage: 0 (stem after max-pool), 1 .. n (residual stages) or None (last). Earlier stages have
                finer grids: at 32x64x64 with the default stem, 8x16x16 (stages 0-1), 4x8x8, 2x4x4, 1x2x2.

        Shape:
            x: (B, 1, D, H, W) -> (B, stage_channels(stage), *stage_grid(D, H, W, stage))
        """
        self._check_input(x)
        k = self._stage_index(stage)
        x = self.stem(x)
        for stage_module in self.stages[:k]:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(stage_module, x, use_reentrant=False)
            else:
                x = stage_module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled embedding.

        Shape:
            x: (B, 1, D, H, W) float in [0, 1] -> (B, widths[-1])
        """
        return self.feature_map(x).mean(dim=(2, 3, 4))


@register_encoder
def resnet3d_tiny(**kwargs) -> ResNet3D:
    """Tiny ResNet for tests: one block per stage, widths 8-64."""
    cfg = dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64))
    return ResNet3D(**{**cfg, **kwargs})


@register_encoder
def resnet3d_small(**kwargs) -> ResNet3D:
    """Small ResNet that trains the demo on a CPU: one block per stage, widths 16-128."""
    cfg = dict(layers=(1, 1, 1, 1), widths=(16, 32, 64, 128))
    return ResNet3D(**{**cfg, **kwargs})


@register_encoder
def resnet3d_18(**kwargs) -> ResNet3D:
    """ResNet-18 layout in 3D: (2, 2, 2, 2) blocks, widths 64-512."""
    cfg = dict(layers=(2, 2, 2, 2), widths=(64, 128, 256, 512))
    return ResNet3D(**{**cfg, **kwargs})
