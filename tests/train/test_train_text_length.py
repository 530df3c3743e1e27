"""Reports are never cut silently: the report tower's length covers the synthetic CT reports in the demo's
and the ablation's configs, and a config that would cut them stops with an error naming the fix."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import sys
from pathlib import Path

import pytest

from ctxray.models.text import Tokenizer
from ctxray.train.setup import build_tokenizer, check_report_lengths, report_token_stats

ROOT = Path(__file__).resolve().parents[2]


def _tiny_world_reports(world: Path) -> list[str]:
    from ctxray.data.ctrate import read_ctrate

    return [r.report for r in read_ctrate(world / "ct-rate", "train", missing="keep")]


def _ablation_config(tmp_path: Path):
    spec = importlib.util.spec_from_file_location("run_ablation", ROOT / "bench" / "ablation" / "run_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.row_config(tmp_path, mod.Settings(), mod.ROWS[4], seed=0)  # row e, the full method


def test_report_token_stats_and_the_error_above_the_allowed_share(caplog):
    reports = ["the " * 40, "short report", "another short report"]
    tok = Tokenizer.train(reports, vocab_size=100)
    stats = report_token_stats(tok, reports, max_length=16)
    assert stats["truncated"] == 1 and stats["truncated_fraction"] == pytest.approx(1 / 3)
    assert stats["max"] == 42 and stats["n"] == 3  # 40 words + [CLS] + [SEP]
    with pytest.raises(ValueError, match=r"1 of 3 training reports.*max_length \(>= 42\)"):
        check_report_lengths(stats, 0.01, "cache C")
    with caplog.at_level(logging.WARNING):
        check_report_lengths(stats, 0.5, "cache C")  # allowed: logged, not silent
    assert "would be cut" in caplog.text


@pytest.mark.parametrize("which", ["demo", "ablation"])
def test_the_demo_and_ablation_configs_read_whole_synthetic_reports(tiny_world, tmp_path, which):
    from ctxray.demo import PRESETS, RUNS, train_config

    if which == "demo":
        config = train_config(PRESETS["demo"], tmp_path / "c", tmp_path / "r", RUNS["full"], seed=0)
        # its tokenizer is the pre-trained tower's, which `train_tokenizer` builds exactly as a scratch run does
        assert config.text_init == "pretrained"
        config = dataclasses.replace(config, text_init="scratch")
    else:
        config = _ablation_config(tmp_path)
    reports = _tiny_world_reports(tiny_world)
    tok = build_tokenizer(config, reports)
    stats = report_token_stats(tok, reports, config.model.text.max_length)
    assert stats["truncated"] == 0, stats
    assert stats["median"] > 128  # the old 128-token tower cut most of them
    check_report_lengths(stats, config.data.max_truncated, which)
    cut = report_token_stats(tok, reports, 128)
    assert cut["truncated_fraction"] > 0.5
    with pytest.raises(ValueError, match="model.text.max_length"):
        check_report_lengths(cut, config.data.max_truncated, which)
