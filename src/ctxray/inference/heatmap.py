"""Relevance maps for one finding: Grad-CAM, HiResCAM and occlusion sensitivity, behind one interface.

The score explained is a scalar per volume: for a CT-report model, the zero-shot log-odds direction
``v . (p_l - n_l)`` of label ``l`` (``v`` the volume embedding, ``p_l``/``n_l`` the label's positive and
negative prompt-ensemble embeddings, :func:`direction_score`); for a classifier, the label's logit.

Methods (``Method``):

- ``gradcam``: Grad-CAM. Each channel ``c`` of a stage's activation ``A`` is weighted by the mean gradient
  of the score, ``w_c = mean_xyz dS/dA_c``, and the map is ``relu(sum_c w_c A_c)``.
- ``hirescam``: HiResCAM, ``relu(sum_c dS/dA_c * A_c)`` voxel by voxel: for a model that pools its last
  features by their mean it is exactly each voxel's contribution to the score, and it cannot spread a
  channel's weight onto places that did not contribute (Grad-CAM can).
- ``occlusion``: occlusion sensitivity. A 3D patch of the input (default a quarter of each axis,
  stride half the patch) is set to ``baseline`` (0 = the window floor, air; or ``"blur"``, a smoothed copy
  of the volume, which removes a lesion without cutting an air hole into the body) and the map is the mean
  score drop ``relu(S(x) - S(x_occluded))`` over the patches covering each voxel. Model-agnostic and
  slow (one forward pass per patch position); the usual reference.
- ``rollout`` / ``gradrollout``: attention rollout and its gradient-weighted variant, for the ViT encoders
  only (``ctxray.inference.rollout``); on the token grid. Plain rollout ignores the label.

Layer (``stage``): for the 3D ResNets, stage 1 by default (after the stem and the first residual stage;
1/4 of the input per axis: 8x16x16 at 32x64x64, 12x24x24 at 48x96x96). The last stage (1/32: 1x2x2 at
32x64x64) is too coarse for any map on it to point at a lesion: best possible hit rate 0.11 against 0.91 for
stage 1 (``bench/pointing_game.py`` prints it per grid); stage 1 also had the best pointing game of stages
0-4 for Grad-CAM and HiResCAM on the supervised reference model (README, "Pointing game"). A ViT has one
grid, its patch tokens (final norm by default). Maps are upsampled trilinearly to the model input,
scaled to [0, 1]; ``CTModel.explain`` maps them back onto the scan's grid with ``PreprocessSpec.invert``.

An encoder that names its stages (``feature_module(stage)``, as ``ResNet3D`` and ``ViT3D`` do) is hooked
there; otherwise module outputs shaped like ``model.volume_feature_map`` are hooked (the last one found),
and without any, gradient x input is used and the method text says so.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctxray.inference.rollout import rollout

log = logging.getLogger(__name__)

Method = Literal["gradcam", "hirescam", "occlusion", "rollout", "gradrollout"]
METHODS: tuple[str, ...] = ("gradcam", "hirescam", "occlusion", "rollout", "gradrollout")
ATTENTION_METHODS: tuple[str, ...] = ("rollout", "gradrollout")  # ViT encoders only (ctxray.inference.rollout)
ScoreFn = Callable[[torch.Tensor], torch.Tensor]  # (B, 1, D, H, W) -> (B,)
CAM_METHODS: tuple[str, ...] = ("gradcam", "hirescam")


def method_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """A method as ``ctxray predict --explain-method`` and ``bench/pointing_game.py`` name it: ``name`` or
    ``name:option``, as :func:`explain`'s ``method`` and keyword arguments.

    Options: ``occlusion:blur`` (the patch filled with a smoothed copy of the volume, ``baseline="blur"``),
    ``occlusion:DxHxW`` (patch size in voxels, e.g. ``occlusion:4x8x8``), ``gradcam:N`` / ``hirescam:N`` (the
    CAM on feature stage N).

    Raises:
        ValueError: an unknown method, or an option the method does not take (naming both).
    """
    name, _, option = str(spec).partition(":")
    if name not in METHODS:
        raise ValueError(f"explanation method {spec!r}: unknown {name!r}; choose from {', '.join(METHODS)} "
                         "(options: occlusion:blur, occlusion:DxHxW, gradcam:N, hirescam:N)")
    if not option:
        return name, {}
    if name == "occlusion" and option == "blur":
        return name, {"baseline": "blur"}
    if name == "occlusion" and option.count("x") == 2 and option.replace("x", "").isdigit():
        patch = tuple(int(v) for v in option.split("x"))
        if min(patch) >= 1:
            return name, {"patch": patch}
    if name in CAM_METHODS and option.isdigit():
        return name, {"stage": int(option)}
    raise ValueError(f"explanation method {spec!r}: {name} takes no option {option!r} (options: occlusion:blur, "
                     "occlusion:DxHxW, gradcam:N, hirescam:N)")

_TEXT = {
    "gradcam": "Grad-CAM (channel weights = mean gradient) on {layer}",
    "hirescam": "HiResCAM (gradient x activation per voxel) on {layer}",
}
_TAIL = (" of the label's score (zero-shot: prompt-embedding difference, positive minus negative ensemble; "
         "classifier: the label's logit), "
         "upsampled trilinearly and mapped back to the scan grid with the preprocessing spec's inverse; scaled "
         "to [0, 1] per map. It shows where the score is sensitive, not a segmentation.")
GRADCAM = _TEXT["gradcam"].format(layer="the volume encoder's last spatial features") + _TAIL
GRAD_X_INPUT = ("gradient x input of the label's score (no spatial activation found for a CAM), smoothed, mapped "
                "back to the scan grid; scaled to [0, 1] per map.")


@dataclass
class Relevance:
    """A relevance map on the model input grid.

    Args:
        map: values in [0, 1]. Shape: (D, H, W) of the model input.
        method: a sentence stating how it was computed.
        score: the explained score of the volume.
        grid: (d, h, w) of the grid the map was computed on (feature grid, or occlusion patch positions).
    """

    map: np.ndarray
    method: str
    score: float
    grid: tuple[int, int, int] | None = None


def direction_score(model: nn.Module, direction: torch.Tensor) -> ScoreFn:
    """The score ``encode_volume(x) . direction`` of a CT-report model (``DualEncoder``)."""
    return lambda x: (model.encode_volume(x) * direction.to(x)).sum(dim=-1)


def _encoder(model: nn.Module) -> nn.Module | None:
    """The module that names its stages (``feature_module``), if any."""
    for m in (getattr(model, "volume_encoder", None), model, *model.children()):
        if m is not None and callable(getattr(m, "feature_module", None)):
            return m
    return None


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


def _hook_targets(model: nn.Module, volume: torch.Tensor, stage: int | None
                  ) -> tuple[list[nn.Module], tuple[int, int, int], int, str]:
    """Modules to hook, the feature grid, its channels and a layer description."""
    enc = _encoder(model)
    if enc is not None:
        module = enc.feature_module(stage)
        grid = tuple(enc.stage_grid(tuple(volume.shape[2:]), stage))
        where = "the final features" if stage is None else f"stage {stage}"
        layer = f"{type(enc).__name__} {where} ({'x'.join(map(str, grid))} grid)"
        return [module], grid, int(enc.stage_channels(stage)), layer
    shape = _feature_map_shape(model, volume)  # (1, C, d, h, w)
    return list(model.modules()), tuple(shape[2:]), int(shape[1]), "the volume encoder's last spatial features"


def _cam(model: nn.Module, volume: torch.Tensor, score_fn: ScoreFn, method: Method, stage: int | None
         ) -> tuple[torch.Tensor, str, float, tuple[int, int, int] | None]:
    modules, grid, channels, layer = _hook_targets(model, volume, stage)
    n_tokens = int(np.prod(grid))
    found: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        if output.ndim == 5 and tuple(output.shape[1:]) == (channels, *grid):
            found.append(output)
        elif output.ndim == 3 and output.shape[2] == channels and output.shape[1] in (n_tokens, n_tokens + 1):
            found.append(output)

    with torch.enable_grad():
        x = volume.detach().clone().requires_grad_(True)
        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            score = score_fn(x)[0]
        finally:
            for h in handles:
                h.remove()
        if not found:
            log.warning("no spatial activation of grid %s found by hooks; using gradient x input", grid)
            (grad,) = torch.autograd.grad(score, x)
            cam = F.avg_pool3d(F.relu(grad * x), kernel_size=5, stride=1, padding=2)
            return cam, GRAD_X_INPUT, float(score.detach()), None
        act = found[-1]
        (grad,) = torch.autograd.grad(score, act)
    a, g = _as_volume(act, grid), _as_volume(grad, grid)  # (1, C, d, h, w)
    if method == "gradcam":
        cam = (g.mean(dim=(2, 3, 4), keepdim=True) * a).sum(dim=1, keepdim=True)
    else:
        cam = (g * a).sum(dim=1, keepdim=True)
    cam = F.interpolate(F.relu(cam), size=tuple(volume.shape[2:]), mode="trilinear", align_corners=False)
    return cam.detach(), _TEXT[method].format(layer=layer) + _TAIL, float(score.detach()), grid


def _occlusion(score_fn: ScoreFn, volume: torch.Tensor, patch: tuple[int, int, int] | None,
               stride: tuple[int, int, int] | None, baseline: float | str, batch: int
               ) -> tuple[torch.Tensor, str, float, tuple[int, int, int]]:
    shape = tuple(int(s) for s in volume.shape[2:])
    patch = patch or tuple(max(1, s // 4) for s in shape)
    stride = stride or tuple(max(1, p // 2) for p in patch)
    starts = [sorted({*range(0, max(s - p, 0) + 1, st), max(s - p, 0)}) for s, p, st in zip(shape, patch, stride)]
    grid = tuple(-(-s // st) for s, st in zip(shape, stride))  # the map is constant on stride-sized blocks
    if baseline == "blur":  # the patch replaced by a heavily smoothed copy of the volume (its surroundings)
        k = tuple(2 * (p // 2) + 1 for p in patch)
        fill = F.avg_pool3d(F.pad(volume, [v // 2 for v in k[::-1] for _ in (0, 1)], mode="replicate"), k, stride=1)
        what = "a smoothed copy of the volume (box filter of the patch size)"
    else:
        fill, what = torch.full_like(volume, float(baseline)), f"{float(baseline):g} (the HU window floor)"
    with torch.no_grad():
        ref = float(score_fn(volume)[0])
        drop = torch.zeros(shape)
        count = torch.zeros(shape)
        corners = list(itertools.product(*starts))
        for i in range(0, len(corners), batch):
            chunk = corners[i:i + batch]
            xs = volume.repeat(len(chunk), 1, 1, 1, 1)
            for j, (z, y, x) in enumerate(chunk):
                region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                xs[(j, slice(None), *region)] = fill[(0, slice(None), *region)]
            scores = score_fn(xs).float().cpu()  # (b,)
            for (z, y, x), s in zip(chunk, scores):
                region = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                drop[region] += ref - float(s)
                count[region] += 1
    cam = F.relu(drop / count.clamp_min(1))[None, None]
    text = (f"occlusion sensitivity: mean drop of the label's score when a {'x'.join(map(str, patch))}-voxel patch "
            f"(stride {'x'.join(map(str, stride))}) is set to {what}, "
            "mapped back to the scan grid with the preprocessing spec's inverse; scaled to [0, 1] per map.")
    return cam, text, ref, grid  # type: ignore[return-value]


def explain(model: nn.Module, volume: torch.Tensor, score_fn: ScoreFn, method: Method = "gradcam",
            stage: int | None | Literal["auto"] = "auto", patch: tuple[int, int, int] | None = None,
            stride: tuple[int, int, int] | None = None, baseline: float | Literal["blur"] = 0.0,
            batch: int = 8) -> Relevance:
    """A relevance map of ``score_fn`` for one volume.

    Args:
        model: the network ``score_fn`` runs (searched for an encoder with ``feature_module``).
        volume: one preprocessed volume.
        score_fn: the explained score, e.g. :func:`direction_score` or a classifier logit.
        method: ``gradcam``, ``hirescam``, ``occlusion``, or for a ViT ``rollout`` / ``gradrollout``.
        stage: feature stage of the CAMs: ``"auto"`` is the encoder's ``explain_stage`` (ResNet: 1, ViT: the
            final tokens), None the last; ignored by encoders without stages and by occlusion.
        patch, stride: occlusion patch and stride in voxels (default: a quarter of each axis, half of it).
        baseline: the occluded value (model input units), or ``"blur"``: the patch is filled with a smoothed
            copy of the volume (a box filter of the patch size), so that occluding removes local detail (a
            lesion) without putting an air-filled hole into the body, which the model may react to anywhere.
        batch: occluded volumes per forward pass.

    Returns:
        :class:`Relevance` on the model input grid.

    Shape:
        volume: (1, 1, D, H, W); map: (D, H, W)
    """
    if volume.ndim != 5 or volume.shape[0] != 1:
        raise ValueError(f"explain expects one volume (1, 1, D, H, W), got {tuple(volume.shape)}")
    if method not in METHODS:
        raise ValueError(f"unknown explanation method {method!r}; choose one of {METHODS}")
    if stage == "auto":
        stage = getattr(_encoder(model), "explain_stage", None)
    was_training = model.training
    model.eval()
    try:
        if method == "occlusion":
            cam, text, score, grid = _occlusion(score_fn, volume, patch, stride, baseline, batch)
        elif method in ATTENTION_METHODS:
            cam, text, score, grid = rollout(model, volume, score_fn, weighted=method == "gradrollout")
            text += ("; upsampled trilinearly and mapped back to the scan grid with the preprocessing spec's "
                     "inverse; scaled to [0, 1] per map.")
        else:
            cam, text, score, grid = _cam(model, volume, score_fn, method, stage)
    finally:
        model.train(was_training)
    out = cam[0, 0].detach().float().cpu().numpy()
    top = float(out.max())
    out = out / top if top > 0 else out
    return Relevance(map=out.astype(np.float32), method=text, score=score, grid=grid)


def gradcam(model: nn.Module, volume: torch.Tensor, direction: torch.Tensor, stage: int | None = None) -> Relevance:
    """Grad-CAM of the score ``encode_volume(volume) . direction`` (see :func:`explain`).

    Shape:
        volume: (1, 1, D, H, W); direction: (E,); map: (D, H, W)
    """
    return explain(model, volume, direction_score(model, direction), "gradcam", stage=stage)


def invert_map(spec: Any, map_: np.ndarray, shape: tuple[int, ...], spacing_zyx: tuple[float, float, float]
               ) -> np.ndarray:
    """A model-grid map put back on the scan's grid with ``spec.invert``, scaled to [0, 1]."""
    mapped = spec.invert(map_, tuple(shape), tuple(spacing_zyx))
    top = float(mapped.max())
    return (mapped / top if top > 0 else mapped).astype(np.float32)
