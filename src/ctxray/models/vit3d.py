"""3D Vision Transformer volume encoder (the family CT-CLIP and fVLM use), written for CPU and big volumes.

Design: non-overlapping 3D patches embedded by a strided ``Conv3d`` (kernel = stride = patch size), pre-norm
transformer blocks using ``torch.nn.functional.scaled_dot_product_attention`` (fused, memory-efficient kernels
on CPU and GPU), a learned or fixed 3D sin-cos position embedding sized from ``input_shape`` and interpolated
for other shapes, mean-pooled (or CLS) output. Optional gradient checkpointing per block; all ops are
bf16-autocast friendly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctxray.models.conv_stem import ConvStem
from ctxray.models.registry import VolumeEncoder, check_input_shape, register_encoder

__all__ = ["ViT3D", "sincos_pos_embed_3d", "vit3d_base", "vit3d_small", "vit3d_tiny"]

PosEmbed = Literal["learned", "sincos"]
Pool = Literal["mean", "cls"]
Stem = Literal["patch", "conv"]


def _triple(value: int | Sequence[int], what: str) -> tuple[int, int, int]:
    vals = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(vals) != 3 or min(vals) < 1:
        raise ValueError(f"{what} must be a positive int or three positive ints (D, H, W); got {value!r}")
    return vals  # type: ignore[return-value]


def sincos_pos_embed_3d(grid: Sequence[int], dim: int) -> torch.Tensor:
    """Fixed 3D sine-cosine position embedding (one third of the channels per axis, zero-padded).

    Args:
        grid: token grid ``(gd, gh, gw)``.
        dim: embedding width.

    Returns:
        (gd * gh * gw, dim) float32, tokens in ``(d, h, w)`` row-major order.
    """
    per_axis = 2 * (dim // 6)
    if per_axis == 0:
        raise ValueError(f"sincos position embedding needs embed_dim >= 6; got {dim}")
    freqs = 1.0 / (10000.0 ** (torch.arange(per_axis // 2, dtype=torch.float64) / (per_axis // 2)))
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for axis in coords:
        angles = axis.reshape(-1, 1) * freqs.reshape(1, -1)  # (N, per_axis/2)
        parts += [torch.sin(angles), torch.cos(angles)]
    emb = torch.cat(parts, dim=1)  # (N, 3 * per_axis)
    emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.float()


class Attention(nn.Module):
    """Multi-head self-attention on top of ``scaled_dot_product_attention``.

    ``keep_attention`` (off by default; set by explanation code, e.g. attention rollout in
    ``ctxray.inference.heatmap``): the attention probabilities are computed explicitly (same result as the
    fused kernel up to rounding, without its memory savings) and kept in ``attention`` (B, heads, N, N),
    still in the autograd graph so that a score's gradient with respect to them can be taken.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.keep_attention = False
        self.attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: x (B, N, C) -> (B, N, C)."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, C/heads)
        if self.keep_attention:
            attn = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, heads, N, N)
            self.attention = attn
            out = attn @ v  # (B, heads, N, C/heads)
        else:
            out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Full attention over all N tokens (``grid`` is unused here; factorised blocks need it).

        Shape: x (B, N, C) -> (B, N, C).
        """
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT3D(VolumeEncoder):
    """3D ViT encoder.

    Args:
        input_shape: ``(D, H, W)`` the position embedding is sized for; each must be divisible by the patch.
        patch_size: patch ``(pd, ph, pw)`` (or one int).
        embed_dim: token width (= ``out_dim`` = ``feature_dim``).
        depth: number of transformer blocks.
        num_heads: attention heads (must divide ``embed_dim``).
        mlp_ratio: MLP hidden width / ``embed_dim``.
        pos_embed: ``"learned"`` (interpolated trilinearly for other grids) or ``"sincos"`` (fixed, recomputed).
        pool: ``"mean"`` over patch tokens or a ``"cls"`` token.
        grad_checkpointing: recompute each block's activations in backward (saves memory in training).
        stem: ``"patch"`` (one patchify convolution) or ``"conv"`` (strided 3x3x3 convolutions, then a patchify
            one: :class:`~ctxray.models.conv_stem.ConvStem`; same token grid).
        stem_width: channels of the conv stem's first convolution (doubled by each later one).
        stem_convs: number of the conv stem's 3x3x3 convolutions.

    Shape:
        forward: (B, 1, D, H, W) float in [0, 1] -> (B, embed_dim);
        feature_map: -> (B, embed_dim, D/pd, H/ph, W/pw).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (48, 96, 96),
        patch_size: int | Sequence[int] = 16,
        embed_dim: int = 384,
        depth: int = 6,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_embed: PosEmbed = "learned",
        pool: Pool = "mean",
        grad_checkpointing: bool = False,
        stem: Stem = "patch",
        stem_width: int = 32,
        stem_convs: int = 2,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.input_shape = check_input_shape(input_shape, name)
        self.patch_size = _triple(patch_size, f"{name}: patch_size")
        if embed_dim < 1 or depth < 1 or num_heads < 1 or embed_dim % num_heads:
            raise ValueError(
                f"{name}: embed_dim ({embed_dim}) must be a positive multiple of num_heads ({num_heads}); depth >= 1"
            )
        if pos_embed not in ("learned", "sincos"):
            raise ValueError(f"{name}: pos_embed must be 'learned' or 'sincos'; got {pos_embed!r}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"{name}: pool must be 'mean' or 'cls'; got {pool!r}")
        if stem not in ("patch", "conv"):
            raise ValueError(f"{name}: stem must be 'patch' or 'conv'; got {stem!r}")
        grid = self.token_grid(self.input_shape)
        self.out_dim = self.feature_dim = embed_dim
        self.pos_kind, self.pool = pos_embed, pool
        self.grad_checkpointing = bool(grad_checkpointing)
        self.stem = stem
        if stem == "conv":
            self.patch_embed: nn.Module = ConvStem(self.patch_size, embed_dim, stem_width, stem_convs)
        else:
            self.patch_embed = nn.Conv3d(1, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        n_tokens = math.prod(grid)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, embed_dim))
        else:
            self.register_buffer("pos_embed", sincos_pos_embed_3d(grid, embed_dim)[None], persistent=False)
        self.register_buffer("pos_grid", torch.tensor(grid, dtype=torch.long))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if pool == "cls" else None
        self.blocks = self._make_blocks(embed_dim, depth, num_heads, mlp_ratio)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _make_blocks(self, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> nn.ModuleList:
        """The transformer blocks (full attention here; subclasses factorise it)."""
        return nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))

    def _init_weights(self) -> None:
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        patchify = self.patch_embed.proj if isinstance(self.patch_embed, ConvStem) else self.patch_embed
        w = patchify.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(patchify.bias)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """The learned position embedding and the CLS token take no weight decay."""
        return {n for n in ("pos_embed", "cls_token") if isinstance(getattr(self, n), nn.Parameter)}

    def token_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(gd, gh, gw)`` for a volume shape ``(D, H, W)``.

        Raises:
            ValueError: naming the shape and the patch size when they do not divide.
        """
        if any(s % p for s, p in zip(shape, self.patch_size)):
            raise ValueError(
                f"{type(self).__name__}: input shape {tuple(shape)} is not divisible by the patch size "
                f"{self.patch_size}; resample or crop/pad the volume to a multiple of the patch"
            )
        return tuple(s // p for s, p in zip(shape, self.patch_size))  # type: ignore[return-value]

    def _pos_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """Position embedding (1, N, C) for a token grid, interpolated/recomputed if it differs."""
        own = tuple(int(g) for g in self.pos_grid.tolist())
        if grid == own:
            return self.pos_embed
        if self.pos_kind == "sincos":
            return sincos_pos_embed_3d(grid, self.out_dim)[None].to(self.pos_embed)
        pos = self.pos_embed.reshape(1, *own, -1).permute(0, 4, 1, 2, 3)  # (1, C, gd, gh, gw)
        pos = F.interpolate(pos, size=grid, mode="trilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)  # (1, N', C)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """Embedded, transformed, normalised tokens (CLS first when pool == 'cls')."""
        self._check_input(x)
        grid = self.token_grid(x.shape[2:])
        recompute = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        if recompute and self.stem == "conv":  # the stem's full-resolution activations are the largest
            t = checkpoint(self.patch_embed, x, use_reentrant=False)
        else:
            t = self.patch_embed(x)
        t = t.flatten(2).transpose(1, 2)  # (B, C, gd, gh, gw) -> (B, N, C)
        t = t + self._pos_for(grid)
        if self.cls_token is not None:
            t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype), t], dim=1)  # (B, 1+N, C)
        for block in self.blocks:
            if recompute:
                t = checkpoint(block, t, grid, use_reentrant=False)
            else:
                t = block(t, grid)
        return self.norm(t), grid

    def feature_module(self, stage: int | None = None) -> nn.Module:
        """The module whose output holds the tokens of ``feature_map(x, stage)`` (for explanation hooks).

        ``stage`` i in 0 .. depth-1 is block i's output; None (or -1) the final norm. Every stage is on the
        token grid: a ViT has no finer feature grid than its patches.
        """
        if stage is None or stage == -1:
            return self.norm
        if not 0 <= int(stage) < len(self.blocks):
            raise ValueError(f"{type(self).__name__}: stage must be 0 .. {len(self.blocks) - 1} or None; got {stage}")
        return self.blocks[int(stage)]

    def stage_grid(self, shape: Sequence[int], stage: int | None = None) -> tuple[int, int, int]:
        """Token grid of every stage (see :meth:`token_grid`)."""
        self.feature_module(stage)  # validates stage
        return self.token_grid(shape)

    def stage_channels(self, stage: int | None = None) -> int:
        """Channels of every stage (the embedding width)."""
        return self.feature_dim

    def feature_map(self, x: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        """Patch-token features as a volume (after the final norm, or block ``stage``'s output).

        Shape:
            x: (B, 1, D, H, W) -> (B, embed_dim, D/pd, H/ph, W/pw)
        """
        if stage is not None and stage != -1:
            module, found = self.feature_module(stage), []
            handle = module.register_forward_hook(lambda _m, _i, out: found.append(out))
            try:
                self._tokens(x)
            finally:
                handle.remove()
            t, grid = found[-1], self.token_grid(x.shape[2:])
            t = t[:, 1:] if self.cls_token is not None else t
            return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)
        t, grid = self._tokens(x)
        if self.cls_token is not None:
            t = t[:, 1:]
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding.

        Shape:
            x: (B, 1, D, H, W) float in [0, 1] -> (B, embed_dim)
        """
        t, _ = self._tokens(x)
        return t[:, 0] if self.cls_token is not None else t.mean(dim=1)

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Interpolate a checkpoint's learned position embedding onto this encoder's token grid."""
        if "pos_grid" not in state or self.pos_kind != "learned" or "pos_embed" not in state:
            return state
        src = tuple(int(g) for g in state["pos_grid"].tolist())
        own = tuple(int(g) for g in self.pos_grid.tolist())
        if src == own:
            return state
        state = dict(state)
        pos = state["pos_embed"].reshape(1, *src, -1).permute(0, 4, 1, 2, 3)
        pos = F.interpolate(pos.float(), size=own, mode="trilinear", align_corners=False)
        state["pos_embed"] = pos.flatten(2).transpose(1, 2).to(state["pos_embed"].dtype)
        state["pos_grid"] = self.pos_grid.clone()
        return state


@register_encoder
def vit3d_tiny(**kwargs) -> ViT3D:
    """Tiny ViT for tests: 48-d, 2 blocks, 3 heads, patch 8x16x16."""
    cfg = dict(patch_size=(8, 16, 16), embed_dim=48, depth=2, num_heads=3)
    return ViT3D(**{**cfg, **kwargs})


@register_encoder
def vit3d_small(**kwargs) -> ViT3D:
    """Demo default: 384-d, 6 blocks, 6 heads, patch 16^3 (216 tokens at 96^3, 108 at 48x96x96)."""
    cfg = dict(patch_size=16, embed_dim=384, depth=6, num_heads=6)
    return ViT3D(**{**cfg, **kwargs})


@register_encoder
def vit3d_base(**kwargs) -> ViT3D:
    """ViT-Base: 768-d, 12 blocks, 12 heads, patch 16^3."""
    cfg = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return ViT3D(**{**cfg, **kwargs})
