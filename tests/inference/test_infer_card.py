"""The model card: what the model is, the data it saw (from the cache reader), thresholds and their source."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ctxray.inference.card import model_card
from ctxray.train.config import TrainConfig


def test_card_states_data_loss_terms_thresholds_and_limits(tmp_path):
    rows = [{"id": "a", "split": "train"}, {"id": "b", "split": "train"}, {"id": "c", "split": "valid"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig()
    config.data.cache = str(tmp_path)
    info = {"encoder": "resnet3d_tiny", "created": "2026-01-01T00:00:00+00:00", "input_shape": [16, 32, 32],
            "embed_dim": 32, "has_decoder": False, "ctxray_version": "0.1.0", "code_version": {"git": "abc"},
            "text_backbone": None}
    spec = {"name": "tiny", "spacing_zyx": [21, 11, 11], "shape_zyx": [16, 32, 32], "hu_min": -1000, "hu_max": 1000}
    card = model_card(info, config, spec, {"Emphysema": 0.42}, "Youden on valid", None, None, "NOT A DEVICE")
    assert "- Volume encoder `resnet3d_tiny` on input (D, H, W) = (16, 32, 32)" in card
    assert "- Volumes per split: train: 2, valid: 1" in card
    assert "- Loss weights: roco 1, pkd" in card  # every loss term of the config, in the objective's order
    assert "| Emphysema | 0.4200 |" in card and "Source: Youden on valid." in card
    assert card.rstrip().endswith("NOT A DEVICE")
    assert "No evaluation metrics were given" in card
    assert "No label's localisation was validated" in model_card(info, SimpleNamespace(), spec, {}, "", None, None,
                                                                   "")
