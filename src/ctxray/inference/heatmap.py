"""Relevance maps for one finding: Grad-CAM on the volume tower's last spatial features.

Method (stated in every output): the score of label ``l`` for a volume embedding ``v`` is the
zero-shot log-odds direction ``v . (p_l - n_l)``, with ``p_l`` and ``n_l`` the label's positive and
negative prompt-ensemble embeddings. Grad-CAM weights each channel ``c`` of the encoder's last
spatial activation ``A`` (the last (B, C, d, h, w) feature volume, or for a ViT the last (B, N, C)
patch tokens after the final norm, reshaped to the token grid) by the mean gradient of the score,
``w_c = mean_xyz dS/dA_c``, and takes ``relu(sum_c w_c A_c)``. The map is upsampled (trilinear) to
the model input grid and scaled to [0, 1]; ``CTModel.explain`` then maps it back onto the input
scan's voxel grid with ``PreprocessSpec.invert``.

The activation is found with forward hooks, so any encoder whose ``feature_map`` output (or its token
form) is produced by a module works. If no such module output exists, gradient x input on the model
input is used instead and the returned method says so.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

GRADCAM = ("Grad-CAM on the volume encoder's last spatial features against the label's prompt-embedding "
           "difference (positive minus negative ensemble), upsampled trilinearly and mapped back to the scan "
           "grid with the preprocessing spec's inverse; scaled to [0, 1] per map.")
GRAD_X_INPUT = ("gradient x input of the label's prompt-embedding-difference score (no spatial activation "
                "found for Grad-CAM), smoothed, mapped back to the scan grid; scaled to [0, 1] per map.")


@dataclass
class Relevance:
    """A relevance map on the model input grid.

    Args:
        map: values in [0, 1]. Shape: (D, H, W) of the model input.
        method: a sentence stating how it was computed.
        score: the label score ``v . (p - n)`` of the volume.
    """

    map: np.ndarray
    method: str
    score: float


def _capture_activations(model: nn.Module, grid: tuple[int, ...], channels: int) -> tuple[list, list]:
    """Register hooks that record module outputs shaped like the feature map (5D or token form)."""
    found: list[torch.Tensor] = []
    n_tokens = int(np.prod(grid))
    handles = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        if output.ndim == 5 and tuple(output.shape[1:]) == (channels, *grid):
            found.append(output)
        elif output.ndim == 3 and output.shape[2] == channels and output.shape[1] in (n_tokens, n_tokens + 1):
            found.append(output)

    for module in model.modules():
        handles.append(module.register_forward_hook(hook))
    return found, handles


def _as_volume(act: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """(B, C, d, h, w) from a 5D activation or from (B, N[+1], C) tokens (a leading CLS is dropped)."""
    if act.ndim == 5:
        return act
    n = int(np.prod(grid))
    tokens = act[:, -n:] if act.shape[1] == n + 1 else act  # (B, N, C)
    return tokens.transpose(1, 2).reshape(act.shape[0], act.shape[2], *grid)


_FM_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _feature_map_shape(model: nn.Module, volume: torch.Tensor) -> tuple[int, ...]:
    """Shape of ``model.volume_feature_map`` for this input shape (one forward pass, then cached)."""
    shapes = _FM_SHAPES.setdefault(model, {})
    key = tuple(volume.shape)
    if key not in shapes:
        with torch.no_grad():
            shapes[key] = tuple(model.volume_feature_map(volume).shape)
    return shapes[key]


def gradcam(model: nn.Module, volume: torch.Tensor, direction: torch.Tensor) -> Relevance:
    """Grad-CAM of the score ``encode_volume(volume) . direction`` for one volume.

    Args:
        model: has ``encode_volume`` and ``volume_feature_map`` (``ctxray.models.dual.DualEncoder``).
        volume: one preprocessed volume.
        direction: the label's ``pos - neg`` prompt-embedding difference.

    Returns:
        :class:`Relevance` on the model input grid.

    Shape:
        volume: (1, 1, D, H, W); direction: (E,); map: (D, H, W)
    """
    if volume.ndim != 5 or volume.shape[0] != 1:
        raise ValueError(f"gradcam expects one volume (1, 1, D, H, W), got {tuple(volume.shape)}")
    was_training = model.training
    model.eval()
    try:
        fm_shape = _feature_map_shape(model, volume)  # (1, C, d, h, w)
        grid, channels = fm_shape[2:], fm_shape[1]
        with torch.enable_grad():
            x = volume.detach().clone().requires_grad_(True)
            found, handles = _capture_activations(model, grid, channels)
            try:
                emb = model.encode_volume(x)  # (1, E)
            finally:
                for h in handles:
                    h.remove()
            score = (emb[0] * direction.to(emb)).sum()
            if found:
                act = found[-1]
                (grad,) = torch.autograd.grad(score, act, retain_graph=True)
                a, g = _as_volume(act, grid), _as_volume(grad, grid)  # (1, C, d, h, w)
                cam = F.relu((g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(dim=1, keepdim=True))
                cam = F.interpolate(cam, size=tuple(volume.shape[2:]), mode="trilinear", align_corners=False)
                method = GRADCAM
            else:
                log.warning("no spatial activation of shape %s found by hooks; using gradient x input", fm_shape)
                (grad,) = torch.autograd.grad(score, x)
                cam = F.avg_pool3d(F.relu(grad * x), kernel_size=5, stride=1, padding=2)
                method = GRAD_X_INPUT
    finally:
        model.train(was_training)
    out = cam[0, 0].detach().float().cpu().numpy()
    top = float(out.max())
    out = out / top if top > 0 else out
    return Relevance(map=out.astype(np.float32), method=method, score=float(score.detach()))
