"""Seeding repeats draws; progress bars are silent off rank 0; only rank 0 logs INFO."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from ctxray.utils.logging import setup_logging
from ctxray.utils.progress import progress
from ctxray.utils.seed import seed_everything


def _draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_repeats_python_numpy_and_torch_draws():
    seed_everything(3)
    first = _draws()
    seed_everything(3)
    assert _draws() == first
    seed_everything(4)
    assert _draws() != first


def test_progress_yields_everything_and_is_silent_off_rank_zero(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert list(progress(range(5), total=5, desc="x")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""


def test_other_ranks_log_warnings_only(monkeypatch):
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    try:
        monkeypatch.setenv("RANK", "2")
        setup_logging(verbose=2)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
