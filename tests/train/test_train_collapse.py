"""The collapse detector fires on a forced collapse (learning rate far too high) and stays quiet on a healthy
run; KD's control levels are logged on every step."""

from __future__ import annotations

import json
import logging

import pytest

from ctxray.train.loop import train

from .test_train_support import tiny_config, write_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return write_cache(tmp_path_factory.mktemp("collapse") / "cache", n_train=32, n_valid=8, seed=3)


def _plain(cache, lr):
    # measured: lr 1.0 -> every step after the second at loss ln 8, cosine 1.000, gradient norm ~1e-7;
    # lr 0.002 -> loss 1.27 and cosine ~0.82 by the end, gradient norms ~1-3: never flagged
    return tiny_config(cache, None, **{"optim.lr": lr, "optim.epochs": 4, "data.batch_size": 8,
                                       "loss.correction": "none"})


def test_collapse_detector_fires_on_a_forced_collapse(cache, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ctxray.train.loop"):
        result = train(_plain(cache, 1.0), tmp_path / "hot")
    assert result["collapsed_steps"] >= 8 and result["first_collapsed_step"] is not None
    assert "training has collapsed" in caplog.text
    metrics = json.loads((tmp_path / "hot" / "metrics.json").read_text())
    assert metrics["collapsed_steps"] == result["collapsed_steps"]


def test_collapse_detector_is_quiet_on_a_healthy_run(cache, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ctxray.train.loop"):
        result = train(_plain(cache, 2e-3), tmp_path / "ok")
    assert result["collapsed_steps"] == 0 and result["first_collapsed_step"] is None
    assert "collapsed" not in caplog.text
    rows = [json.loads(line) for line in (tmp_path / "ok" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "roco" in r]
    assert all(0.0 <= r["volume_cos"] <= 1.0 + 1e-6 and -1.0 <= r["text_cos"] <= 1.0 + 1e-6 for r in steps)
    assert steps[-1]["volume_cos"] < 0.95  # the run spread its embeddings out
