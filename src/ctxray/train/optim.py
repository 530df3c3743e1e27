"""The CT model's optimiser and schedule from its ``OptimConfig``, and their state as tensors + JSON (never pickle).

The building blocks (no-decay parameter groups, the warm-up + cosine factor) are :mod:`ctxray.optim`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ctxray.optim import lr_factor, param_groups
from ctxray.train.config import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "optimizer_state_from_tensors",
           "optimizer_state_to_tensors", "param_groups"]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the text encoder at ``lr * text_lr_scale`` when that is not 1."""
    text_lr = None if cfg.text_lr_scale == 1.0 else cfg.lr * cfg.text_lr_scale
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, text_lr), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine; warm-up is capped at a tenth of ``total_steps``."""
    warmup = min(cfg.warmup_steps, max(0, total_steps // 10))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, warmup, cfg.min_lr_ratio))


def optimizer_state_to_tensors(state: dict[str, Any], prefix: str = "optim") -> tuple[dict, dict]:
    """Split an optimiser ``state_dict`` into tensors (for safetensors) and JSON.

    Returns:
        (tensors keyed ``{prefix}.{param index}.{name}``, JSON-ready dict of everything else).
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "indices": [int(i) for i in state["state"]]}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                                 prefix: str = "optim") -> dict[str, Any]:
    """Inverse of ``optimizer_state_to_tensors``: a ``state_dict`` for ``Optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {int(i): {} for i in meta["indices"]}
    head = prefix + "."
    for key, value in tensors.items():
        if not key.startswith(head):
            continue
        idx, name = key[len(head):].split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}
