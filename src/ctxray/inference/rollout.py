"""Attention rollout for the ViT encoders: where in the token grid the pooled output reads from.

Two methods (``ctxray.inference.heatmap.explain(..., method="rollout" | "gradrollout")``):

- ``rollout`` (attention rollout, Abnar & Zuidema 2020): each block's attention, averaged over heads, with
  the residual connection as an identity, ``A_hat = (mean_h A + I) / 2``, multiplied through the blocks,
  ``R = A_hat_L ... A_hat_1``. A token's relevance is what the pooled output reads from it: the mean of R's
  rows for a mean-pooled encoder, the CLS row for a CLS encoder. It does not depend on the explained score,
  so every label gets the same map: it shows what the encoder attends to, not why it decided.
- ``gradrollout`` (gradient-weighted rollout, after Chefer, Gur & Wolf 2021, "Generic attention-model
  explainability"): each block's attention weighted by the score's gradient with respect to it, positive
  part, averaged over heads, ``A_bar = mean_h relu(dS/dA * A)``, accumulated as ``R <- R + A_bar R`` from
  ``R = I``; a token's relevance is the pooled rows of ``R - I`` (the identity, each token's own share,
  carries no evidence). Label-specific.

Factorised (axial) blocks attend within a slice or along z; their attention is written into the full
N x N matrix (zero between tokens that do not attend to each other) before it is rolled out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ctxray.models.vit3d import ViT3D

ScoreFn = Callable[[torch.Tensor], torch.Tensor]

ROLLOUT_TEXT = {
    "rollout": ("attention rollout (head-averaged attention plus identity for the residual, multiplied through "
                "the {depth} blocks; the rows the pooled output reads) on the {grid} token grid; it does not "
                "depend on the label: it shows what the encoder attends to, not the finding's evidence"),
    "gradrollout": ("gradient-weighted attention rollout (attention x its gradient of the label's score, positive "
                    "part, head-averaged, accumulated over the {depth} blocks) on the {grid} token grid"),
}


def attention_encoder(model: nn.Module) -> nn.Module:
    """The ViT encoder of ``model`` (itself, its ``volume_encoder`` or a child with attention ``blocks``).

    Raises:
        ValueError: when no encoder with transformer blocks is found (e.g. a ResNet).
    """
    for m in (getattr(model, "volume_encoder", None), model, *model.children()):
        if isinstance(m, ViT3D):
            return m
    raise ValueError(f"attention rollout needs a ViT encoder (ctxray.models.vit3d.ViT3D); "
                     f"{type(model).__name__} has none: use gradcam, hirescam or occlusion")


@contextlib.contextmanager
def _keeping_attention(encoder: nn.Module) -> Iterator[list[nn.Module]]:
    modules = [block.attn for block in encoder.blocks]
    for m in modules:
        m.keep_attention, m.attention = True, None
    try:
        yield modules
    finally:
        for m in modules:
            m.keep_attention, m.attention = False, None


def _full(block: nn.Module, attn: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """A block's head-wise attention as one (heads, N, N) matrix over all tokens (batch of one volume).

    Shape: attn (S, heads, n, n) with S sequences (1 for a full block) -> (heads, N, N).
    """
    axis = getattr(block, "axis", "full")
    if axis == "full":
        return attn[0]
    gd, gh, gw = grid
    heads, n_all = attn.shape[1], gd * gh * gw
    full = attn.new_zeros(heads, n_all, n_all)
    ids = torch.arange(n_all, device=attn.device).reshape(gd, gh * gw)  # token index of (z, position in slice)
    if axis == "spatial":  # sequence z holds the slice's tokens: (gd, heads, gh*gw, gh*gw)
        for z in range(gd):
            t = ids[z]
            full[:, t[:, None], t[None, :]] = attn[z]
    else:  # temporal: sequence p holds position p of every slice: (gh*gw, heads, gd, gd)
        for p in range(gh * gw):
            t = ids[:, p]
            full[:, t[:, None], t[None, :]] = attn[p]
    return full


def rollout(model: nn.Module, volume: torch.Tensor, score_fn: ScoreFn, weighted: bool
            ) -> tuple[torch.Tensor, str, float, tuple[int, int, int]]:
    """Token relevance by (gradient-weighted) attention rollout, upsampled to the input.

    Args:
        model: runs ``score_fn``; holds a ``ViT3D`` (:func:`attention_encoder`).
        volume: one model input.
        score_fn: the explained score (only ``gradrollout`` uses its gradient; ``rollout`` only runs it).
        weighted: True for ``gradrollout``.

    Returns:
        (map (1, 1, D, H, W) >= 0, method text, score, token grid).
    """
    import torch.nn.functional as F

    enc = attention_encoder(model)
    grid = tuple(int(g) for g in enc.token_grid(volume.shape[2:]))
    cls = enc.cls_token is not None
    if cls and any(getattr(b, "axis", "full") != "full" for b in enc.blocks):
        raise ValueError("attention rollout of a factorised ViT with a CLS token is not supported")
    with _keeping_attention(enc) as modules, torch.enable_grad():
        x = volume.detach().clone().requires_grad_(weighted)
        score = score_fn(x)[0]
        attns = [m.attention for m in modules]
        if any(a is None for a in attns):
            raise ValueError("the score did not run every attention block of the encoder")
        grads = torch.autograd.grad(score, attns) if weighted else [None] * len(attns)
    eye = torch.eye(grid[0] * grid[1] * grid[2] + int(cls))  # (N, N), CLS first when there is one
    r = eye.clone()
    for block, a, g in zip(enc.blocks, attns, grads):
        a = a.detach().float()
        if weighted:
            step = _full(block, (g.detach().float() * a).clamp_min(0), grid).mean(dim=0)  # (N, N)
            r = r + step @ r
        else:
            step = 0.5 * _full(block, a, grid).mean(dim=0) + 0.5 * eye
            r = (step / step.sum(dim=-1, keepdim=True)) @ r
    if weighted:
        r = r - eye
    rows = r[0] if cls else r.mean(dim=0)  # what the pooled output reads from each token: (N,)
    tokens = rows[1:] if cls else rows
    cam = tokens.clamp_min(0).reshape(1, 1, *grid)
    cam = F.interpolate(cam, size=tuple(volume.shape[2:]), mode="trilinear", align_corners=False)
    text = ROLLOUT_TEXT["gradrollout" if weighted else "rollout"].format(depth=len(enc.blocks),
                                                                         grid="x".join(map(str, grid)))
    return cam, text, float(score.detach()), grid  # type: ignore[return-value]
