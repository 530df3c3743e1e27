"""Optimiser, learning-rate schedule, and their state as tensors + JSON (never pickle)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ctxray.train.config import OptimConfig


def no_decay_names(model: nn.Module) -> set[str]:
    """Full names of parameters that modules list in their ``no_weight_decay()`` (position embeddings...)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn) and module is not model:
            names.update(f"{prefix}.{n}" if prefix else n for n in fn())
    return names


def param_groups(model: nn.Module, weight_decay: float, text_lr: float | None = None) -> list[dict[str, Any]]:
    """AdamW groups: weight matrices decay; norms, biases, the temperature, 1-D tensors and what a
    module lists in ``no_weight_decay()`` (a ViT's position embedding, CLS token) do not. With ``text_lr``,
    the report tower's encoder (``text_encoder.*``) gets its own groups at that learning rate (none when
    it is frozen).

    Parameters are listed in ``named_parameters`` order, so the grouping (and the optimiser state's
    indices) is the same for every process and every run of one config. Frozen parameters are left out.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {(t, d): [] for t in (False, True) for d in (True, False)}
    skip = no_decay_names(model)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        text = text_lr is not None and name.startswith("text_encoder.")
        no_decay = p.ndim < 2 or name in skip or name.endswith("logit_scale") or "norm" in name.lower()
        groups[(text, not no_decay)].append(p)
    out = [{"params": groups[(False, True)], "weight_decay": weight_decay},
           {"params": groups[(False, False)], "weight_decay": 0.0}]
    if text_lr is not None:
        out += [{"params": groups[(True, decay)], "weight_decay": weight_decay if decay else 0.0, "lr": text_lr}
                for decay in (True, False) if groups[(True, decay)]]
    return out


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; the text encoder at ``lr * text_lr_scale`` when that is not 1."""
    text_lr = None if cfg.text_lr_scale == 1.0 else cfg.lr * cfg.text_lr_scale
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, text_lr), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Linear warm-up from ``1/warmup`` to 1 over ``warmup`` steps, then a cosine from 1 to
    ``min_ratio`` at ``total``.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


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
