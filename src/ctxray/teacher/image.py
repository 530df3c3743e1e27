"""The built-in teacher's image tower: a small 2D residual CNN for chest radiographs, in plain torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ImageEncoderConfig:
    """Image tower settings.

    Args:
        widths: channels of the residual stages; each stage after the first halves the resolution.
        blocks: residual blocks per stage.
        stem_width: channels of the stem convolution (followed by a 2x2 max-pool).
        stem_stride: 2: a stride-2 5x5 convolution, stage 1 at a quarter of the input resolution; 4: 4x4
            pixel blocks folded into 16 channels and a 3x3 convolution (a 12x12 window every 4 pixels), stage 1
            at an eighth, so a 128 px input costs about what a 64 px input costs with stride 2.
    """

    widths: tuple[int, ...] = (32, 64, 128, 256)
    blocks: int = 1
    stem_width: int = 24
    stem_stride: int = 2


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity
        self.short = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class XrayImageEncoder(nn.Module):
    """Residual CNN: stem, stages, global average pool.

    Args:
        cfg: the tower's settings.

    Shape:
        forward: (B, 1, H, W) in [0, 1] -> (B, widths[-1])
    """

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        if not cfg.widths or cfg.blocks < 1:
            raise ValueError(f"ImageEncoderConfig: need at least one stage and one block, got {cfg}")
        if cfg.stem_stride not in (2, 4):
            raise ValueError(f"ImageEncoderConfig: stem_stride must be 2 or 4, got {cfg.stem_stride}")
        self.cfg = cfg
        if cfg.stem_stride == 2:
            conv: list[nn.Module] = [nn.Conv2d(1, cfg.stem_width, 5, 2, 2, bias=False)]
        else:  # 4x4 pixel blocks to channels, then a 3x3 convolution: a 12x12 window every 4 pixels
            conv = [nn.PixelUnshuffle(4), nn.Conv2d(16, cfg.stem_width, 3, 1, 1, bias=False)]
        self.stem = nn.Sequential(*conv, nn.BatchNorm2d(cfg.stem_width), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        layers: list[nn.Module] = []
        c = cfg.stem_width
        for i, w in enumerate(cfg.widths):
            for j in range(cfg.blocks):
                layers.append(_BasicBlock(c, w, stride=2 if (i > 0 and j == 0) else 1))
                c = w
        self.stages = nn.Sequential(*layers)
        self.width = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.25  # [0, 1] -> roughly zero-mean, unit-variance
        x = self.stages(self.stem(x))  # (B, C, H/32, W/32) for four stages and stem stride 2
        return x.mean(dim=(2, 3))  # (B, C)
