"""Convolutional stem for the 3D ViTs: a few strided 3x3x3 convolutions in place of the one patchify convolution.

A ViT's patch embedding (one ``Conv3d`` with kernel = stride = patch) sees each patch alone and linearly; on small
datasets such ViTs learn slowly or not at all. Replacing it with a short stack of strided 3x3x3 convolutions
("early convolutions", Xiao et al., NeurIPS 2021) gives the tokens local, overlapping, non-linear features at the
same token grid, and is the usual fix. Here every stem convolution halves each axis whose remaining patch factor is
even (the others keep stride 1), and a last convolution with kernel = stride = the remaining factor makes the tokens:
for a 16^3 patch and two stem convolutions, 3x3x3/2 -> 3x3x3/2 -> 4x4x4/4; for CT-CLIP's 10x20x20, strides
(2, 2, 2), (1, 2, 2), then (5, 5, 5). The token grid, and so everything after the stem, is that of the patch
embedding it replaces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ConvStem", "stem_strides"]


def stem_strides(patch: Sequence[int], convs: int) -> tuple[list[tuple[int, int, int]], tuple[int, int, int]]:
    """Strides of the stem convolutions and the kernel (= stride) of the last one for a patch.

    Args:
        patch: ``(pd, ph, pw)`` the stem must reduce each axis by in all.
        convs: number of 3x3x3 convolutions before the last one.

    Returns:
        ``(strides, last)``: one stride triple per stem convolution (2 where the axis's remaining factor is even,
        else 1) and the remaining factor per axis; ``prod(strides) * last == patch`` on every axis.
    """
    if convs < 0:
        raise ValueError(f"ConvStem: convs must be >= 0; got {convs}")
    left, strides = [int(p) for p in patch], []
    for _ in range(convs):
        step = tuple(2 if p % 2 == 0 else 1 for p in left)
        strides.append(step)
        left = [p // s for p, s in zip(left, step)]
    return strides, tuple(left)  # type: ignore[return-value]


class ConvStem(nn.Module):
    """Strided 3x3x3 convolutions (each with GroupNorm and GELU), then a patchify convolution to ``embed_dim``.

    Args:
        patch: ``(pd, ph, pw)`` total down-sampling per axis (the ViT's patch size).
        embed_dim: channels of the tokens.
        width: channels of the first stem convolution; each later one doubles them.
        convs: number of stem convolutions before the patchify one.

    Shape:
        (B, 1, D, H, W) -> (B, embed_dim, D/pd, H/ph, W/pw)
    """

    def __init__(self, patch: Sequence[int], embed_dim: int, width: int = 32, convs: int = 2) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"ConvStem: width must be >= 1; got {width}")
        strides, last = stem_strides(patch, convs)
        layers: list[nn.Module] = []
        c_in = 1
        for i, stride in enumerate(strides):
            c_out = width * 2**i
            layers += [nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(min(8, c_out), c_out), nn.GELU()]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv3d(c_in, embed_dim, kernel_size=last, stride=last)
        self.strides, self.last = strides, last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, 1, D, H, W) -> (B, embed_dim, D/pd, H/ph, W/pw)."""
        return self.proj(self.convs(x))
