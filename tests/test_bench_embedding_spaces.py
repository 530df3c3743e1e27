"""bench/embedding_spaces.py: the effective rank it reports is 1 for points on a line and ~d for an isotropic
cloud in d dimensions, and a trained run's own reports rank near the top for its volumes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("embedding_spaces", ROOT / "bench" / "embedding_spaces.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_effective_rank_counts_the_dimensions_used():
    mod = _bench()
    g = torch.Generator().manual_seed(0)
    line = torch.randn(200, 1, generator=g) * torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    assert abs(mod.effective_rank(line) - 1.0) < 1e-3
    cloud = torch.randn(4000, 8, generator=g)
    assert 7.8 < mod.effective_rank(cloud) <= 8.0
    flat = torch.cat([torch.randn(4000, 3, generator=g), torch.zeros(4000, 5)], dim=1)
    assert 2.9 < mod.effective_rank(flat) <= 3.0
