"""Shared fixtures: tiny synthetic data, few threads, no progress bars."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The tiny synthetic world, generated once per test session (seed 0)."""
    from ctxray.synth.world import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, preset="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_cache(tiny_world, tmp_path_factory):
    """The tiny world cached at the ``tiny`` preset, once per test session (tests only read it)."""
    from ctxray.data.cache import build_cache
    from ctxray.data.ingest import discover
    from ctxray.data.spec import get_preset

    found = discover(tiny_world / "ct-rate")
    out = tmp_path_factory.mktemp("tiny_cache") / "cache"
    build_cache(found.items, out, get_preset("tiny"), workers=1, prior_errors=found.errors)
    return out
