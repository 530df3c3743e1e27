"""The trainer reading tar shards (``data.shards``): same data as the cache, every volume once per epoch, exact
mid-epoch resume (with DataLoader workers) and errors that name a bad shard setting (2 gloo ranks on shards:
``test_train_ddp.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ctxray.data.shards import ShardDataset, write_shards
from ctxray.train import loop
from ctxray.train.loop import train
from ctxray.train.shard_data import ShardEpochs

from .test_train_support import tiny_config, write_cache, write_targets

SHARD_BYTES = 40_000  # ~2 volumes of (16, 32, 32) float16 per shard: epochs cross many shard boundaries


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharddata")
    cache = write_cache(root / "cache", n_train=16, n_valid=8, seed=3)
    write_shards(cache, root / "train", split="train", shard_bytes=SHARD_BYTES)
    write_shards(cache, root / "valid", split="valid", shard_bytes=SHARD_BYTES)
    write_shards(cache, root / "all", shard_bytes=SHARD_BYTES)
    train_ids = [json.loads(line)["id"] for line in (cache / "manifest.jsonl").read_text().splitlines()
                 if '"train"' in line]
    return cache, write_targets(root / "retrieval", cache), root, train_ids


def shard_config(data, **overrides):
    """``tiny_config`` streaming the train shards; validation from the valid shards, no cache at all."""
    cache, retrieval, root, _ = data
    base = {"data.cache": "", "data.shards": str(root / "train"), "data.val_shards": str(root / "valid")}
    return tiny_config(cache, retrieval, **{**base, **overrides})


def _rows(run: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if ("loss" in r) == (kind == "train")]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


@pytest.fixture
def seen(monkeypatch):
    """Record the ids of every micro-batch the trainer steps on, per epoch."""
    by_epoch: dict[int, list[str]] = {}
    step = loop.Trainer._micro_step

    def record(self, batch, sync):
        by_epoch.setdefault(self.state.epoch, []).extend(batch["ids"])
        return step(self, batch, sync)

    monkeypatch.setattr(loop.Trainer, "_micro_step", record)
    return by_epoch


def test_shards_train_like_the_cache_when_a_batch_holds_the_whole_split(data, tmp_path):
    """With one batch of all 16 volumes the order cannot matter: the shard run (no cache at all) must see the
    same volumes, reports, labels, teacher targets and false-negative pairs as the cache run, step by step."""
    cache, retrieval, _, _ = data
    common = {"optim.epochs": 3, "data.batch_size": 16, "loss.correction": "multi_positive"}
    ref = train(tiny_config(cache, retrieval, **common), tmp_path / "cache")
    got = train(shard_config(data, **common), tmp_path / "shards")
    a, b = _rows(tmp_path / "cache"), _rows(tmp_path / "shards")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for x, y in zip(a, b):
        for key in ("loss", "roco", "pkd", "srkd"):
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (x["step"], key)
    assert got["val_n"] == ref["val_n"] == 8  # validation read from the valid shards
    for key in ("val_auroc", "val_r1"):
        assert got[key] == pytest.approx(ref[key], rel=1e-4), key
    saved = json.loads((tmp_path / "shards" / "checkpoints" / "last" / "config.json").read_text())
    assert saved["data"]["shards"].endswith("train") and saved["model"]["input_shape"] == [16, 32, 32]


def test_every_train_volume_once_per_epoch_with_workers(data, tmp_path, seen):
    train(shard_config(data, **{"optim.epochs": 2, "data.num_workers": 2}), tmp_path / "run")
    ids = data[3]
    assert sorted(seen) == [0, 1]
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == sorted(ids), epoch  # each volume exactly once
    assert seen[0] != seen[1]  # a fresh order each epoch


def test_uneven_slices_take_the_same_whole_batches_on_every_rank(data):
    root = data[2]
    for rank in (0, 1):
        ds = ShardDataset(root / "all", rank=rank, world_size=2, workers=2)  # 24 volumes -> 4 slots of 6
        ep = ShardEpochs(ds, batch_size=4)
        assert (ep.micro_batches, ep.left_out) == (2, 8)  # one batch of 4 per slot, 2 left over in each


@pytest.mark.parametrize("workers", [0, 2])
def test_a_killed_shard_run_resumes_byte_identical(data, tmp_path, seen, workers):
    """Killed 1 step into a 4-step epoch: with 2 workers the next batch is worker 1's, whose slot still has two
    batches, so the resumed loader (which asks worker 0 first) must read that slot there. Dropout and MLM masking
    check that the RNG states come back."""
    cfg = shard_config(data, **{"model.text.dropout": 0.1, "loss.mlm": 0.5, "optim.epochs": 2,
                                "data.num_workers": workers})
    train(cfg, tmp_path / "full")
    full_ids = {e: list(v) for e, v in seen.items()}
    seen.clear()
    assert train(cfg, tmp_path / "part", stop_after=1)["step"] == 1
    state = json.loads((tmp_path / "part" / "checkpoints" / "last" / "state.json").read_text())
    assert state["shards"]["consumed"] == {"0": 4} and state["shards"]["epoch"] == 0
    assert train(cfg, tmp_path / "part", resume=True)["step"] == 8
    assert seen[0] == full_ids[0] and seen[1] == full_ids[1]  # same batches in the same order: none repeated or dropped
    wf, wp = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    lf, lp = _rows(tmp_path / "full"), _rows(tmp_path / "part")
    assert [r["step"] for r in lp] == list(range(1, 9))
    assert [(r["loss"], r["mlm"]) for r in lp] == [(r["loss"], r["mlm"]) for r in lf]


def test_bad_shard_settings_name_the_setting_and_the_folder(data, tmp_path):
    from ctxray.cli import main

    cache, retrieval, root, _ = data
    with pytest.raises(FileNotFoundError, match=r"data.shards=.*nowhere.*shards.json"):
        train(shard_config(data, **{"data.shards": str(tmp_path / "nowhere")}), tmp_path / "a")
    with pytest.raises(ValueError, match=r"data.shards=.*all holds every split"):
        train(shard_config(data, **{"data.shards": str(root / "all")}), tmp_path / "b")
    with pytest.raises(ValueError, match=r"data.val_shards=.*train holds split 'train'"):
        train(shard_config(data, **{"data.val_shards": str(root / "train")}), tmp_path / "c")
    with pytest.raises(ValueError, match="max_train"):
        train(shard_config(data, **{"data.max_train": 8}), tmp_path / "d")
    assert main(["train", "--shards", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")]) == 2
