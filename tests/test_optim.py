"""The shared optimisation blocks: who decays, and the warm-up + cosine factor."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ctxray.optim import lr_factor, param_groups


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.logit_scale = nn.Parameter(torch.tensor(1.0))
        self.pos = nn.Parameter(torch.zeros(5, 3))
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    def no_weight_decay(self) -> set[str]:
        return {"pos"}


def test_only_trainable_weight_matrices_decay() -> None:
    owner = nn.ModuleList([_Toy()])  # no_weight_decay() of a child is honoured under its prefix
    decay, no_decay = param_groups(owner, 0.1)
    names = {id(p): n for n, p in owner.named_parameters()}
    assert [names[id(p)] for p in decay["params"]] == ["0.proj.weight"] and decay["weight_decay"] == 0.1
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["0.logit_scale", "0.norm.bias", "0.norm.weight",
                                                                 "0.pos", "0.proj.bias"]
    assert no_decay["weight_decay"] == 0.0


def test_lr_factor_warms_up_then_follows_a_cosine_to_the_floor() -> None:
    assert lr_factor(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 5, 0, 0.0) == pytest.approx(1.0)  # no warm-up: the peak first
