"""The named ablation variants switch off exactly the terms they name."""

from __future__ import annotations

from ctxray.config import apply_overrides, from_dict, to_dict
from ctxray.demo import RUNS
from ctxray.train.config import TrainConfig
from ctxray.train.variants import NO_KD, NO_PKD, NO_SRKD, PLAIN_CLIP


def _with(overrides: tuple[str, ...]) -> TrainConfig:
    base = to_dict(TrainConfig())
    base["data"]["cache"], base["data"]["retrieval"] = "C", "R"
    return from_dict(TrainConfig, apply_overrides(base, list(overrides)))


def test_variants_switch_off_what_they_name():
    full = _with(())
    assert full.loss.pkd > 0 and full.loss.srkd > 0 and full.loss.correction != "none"
    plain, roco = _with(PLAIN_CLIP), _with(NO_KD)
    assert (plain.loss.pkd, plain.loss.srkd, plain.loss.correction) == (0, 0, "none")
    assert (roco.loss.pkd, roco.loss.srkd, roco.loss.correction) == (0, 0, full.loss.correction)
    assert _with(NO_SRKD).loss.pkd == full.loss.pkd and _with(NO_SRKD).loss.srkd == 0
    assert _with(NO_PKD).loss.srkd == full.loss.srkd and _with(NO_PKD).loss.pkd == 0
    assert plain.model == full.model and plain.optim == full.optim  # only the method changes
    assert RUNS["plain"] == list(PLAIN_CLIP)
