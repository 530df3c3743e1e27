"""Optimisation building blocks shared by every trainer (CT model, X-ray expert, report decoder).

AdamW parameter groups without weight decay on 1-D tensors, norms, the temperature and what a module lists
in ``no_weight_decay()``; and the linear warm-up + cosine learning-rate factor.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn


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


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Linear warm-up from ``1/warmup`` to 1 over ``warmup`` steps, then a cosine from 1 to
    ``min_ratio`` at ``total``.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
