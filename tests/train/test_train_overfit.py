"""A tiny dual encoder memorises a handful of CT-report pairs: the loss falls and R@1 reaches 1.0."""

from __future__ import annotations

import json

import torch

from ctxray.data.cachedir import read_manifest
from ctxray.train.checkpoint import load_model
from ctxray.train.data import PairCollator
from ctxray.train.loop import train

from .test_train_support import tiny_config, write_cache


def test_tiny_model_overfits_eight_pairs(tmp_path):
    from ctxray.data.dataset import CTCacheDataset

    cache = write_cache(tmp_path / "cache", n_train=8, n_valid=0, distinct=True, seed=5)
    cfg = tiny_config(cache, None, **{"loss.correction": "none", "data.batch_size": 8, "data.val_split": "",
                                      "optim.epochs": 150, "optim.lr": 1e-3, "optim.weight_decay": 0.0})
    result = train(cfg, tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert result["step"] == 150
    assert losses[0] > 1.9 and losses[-1] < 0.1 * losses[0]  # log(8) = 2.08 at chance

    model, tok, cfg = load_model(tmp_path / "run")  # no validation split: best is the last model
    last, _, _ = load_model(tmp_path / "run", prefer="last")
    assert all(torch.equal(v, last.state_dict()[k]) for k, v in model.state_dict().items())
    batch = PairCollator(tok, cfg.model.text.max_length)([CTCacheDataset(cache, split="train")[i] for i in range(8)])
    with torch.no_grad():
        sims = model.encode_volume(batch["volume"]) @ model.encode_text(batch["input_ids"],
                                                                         batch["attention_mask"]).T
    assert len(read_manifest(cache, "train")) == 8
    assert (sims.argmax(1) == torch.arange(8)).all()  # volume -> report R@1 = 1.0
    assert (sims.argmax(0) == torch.arange(8)).all()  # report -> volume R@1 = 1.0
