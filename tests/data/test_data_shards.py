"""Tar shards of a cache: round trip, checksums, exactly-once epochs over ranks x workers, mid-epoch resume, URLs."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ctxray.data.dataset import CTCacheDataset
from ctxray.data.shards import (
    INDEX,
    META,
    ShardDataset,
    ShardProgress,
    epoch_slices,
    read_rows,
    slot_order,
    verify_shards,
    write_shards,
)
from ctxray.data.spec import get_preset

N = 23  # not a multiple of ranks x workers x batch, so slices differ in size and straddle shards


def make_cache(root: Path, n: int = N) -> Path:
    """A cache in ``ctxray preprocess``'s layout: float16 volumes with air (zeros) around a noisy body."""
    rng = np.random.default_rng(0)
    (root / "volumes").mkdir(parents=True)
    get_preset("tiny").save(root / "spec.json")
    lines = []
    for i in range(n):
        vol = np.zeros((16, 32, 32), np.float16)
        vol[2:14, 6:26, 4:28] = rng.uniform(0.3, 0.7, (12, 20, 24))
        np.save(root / "volumes" / f"v{i}.npy", vol)
        labels = [None if (i + j) % 7 == 0 else float((i >> (j % 4)) & 1) for j in range(18)]
        lines.append(json.dumps({"id": f"train_{i}_a_1", "file": f"volumes/v{i}.npy", "report": f"Report {i}.",
                                 "labels": labels, "split": "train" if i % 5 else "valid"}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    cache = make_cache(root / "cache")
    write_shards(cache, root / "shards", shard_bytes=40_000)  # ~4 volumes per shard
    return cache, root / "shards"


def _ids(loader) -> list[str]:
    return [i for batch in loader for i in batch["id"]]


def test_round_trip_keeps_every_volume_report_and_label(shards, tmp_path):
    cache, root = shards
    index = json.loads((root / INDEX).read_text())
    assert index["count"] == N and len(index["shards"]) >= 5
    with tarfile.open(root / index["shards"][0]["name"]) as tar:  # the WebDataset layout: KEY.npy + KEY.json
        names = tar.getnames()
    assert names[:2] == ["00000000.npy", "00000000.json"]
    ref = CTCacheDataset(cache)
    got = {item["id"]: item for item in ShardDataset(root, buffer=1, verify="checksum")}
    assert sorted(got) == sorted(ref.ids)
    for k in range(N):
        a, b = ref[k], got[ref.ids[k]]
        assert torch.equal(a["volume"], b["volume"]) and a["report"] == b["report"]
        torch.testing.assert_close(a["labels"], b["labels"], equal_nan=True)

    gz = write_shards(cache, tmp_path / "gz", split="train", compress="gzip")
    assert gz["count"] == len(CTCacheDataset(cache, split="train"))
    assert sum(s["bytes"] for s in gz["shards"]) < 0.6 * sum(s["bytes"] for s in index["shards"])
    one = next(iter(ShardDataset(tmp_path / "gz", buffer=1)))
    assert torch.equal(one["volume"], CTCacheDataset(cache, split="train")[0]["volume"])


def test_a_damaged_shard_is_found(shards, tmp_path):
    import shutil

    _, root = shards
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert verify_shards(copy) == []
    name = json.loads((copy / INDEX).read_text())["shards"][1]["name"]
    data = bytearray((copy / name).read_bytes())
    data[700] ^= 1
    (copy / name).write_bytes(bytes(data))
    assert verify_shards(copy) == [f"{copy / name}: SHA-256 differs from the index"]
    with pytest.raises(OSError, match="SHA-256 differs"):
        list(ShardDataset(copy, verify="checksum", buffer=1))
    (copy / name).write_bytes(bytes(data[:-512]))
    with pytest.raises(OSError, match="the shard is incomplete"):
        list(ShardDataset(copy, buffer=1))
    with pytest.raises(FileExistsError):
        write_shards(shards[0], copy)


def test_every_volume_once_per_epoch_on_two_ranks_with_two_workers(shards):
    _, root = shards
    epochs = []
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            ds = ShardDataset(root, seed=3, buffer=4, rank=rank, world_size=2, workers=2)
            ds.set_epoch(epoch)
            ids = _ids(DataLoader(ds, batch_size=3, num_workers=2))
            assert len(ids) == len(ds)
            per_rank.append(ids)
        seen = per_rank[0] + per_rank[1]
        assert len(seen) == N and len(set(seen)) == N, "a volume was lost or duplicated"
        assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
        epochs.append(per_rank)
    assert epochs[0][0] != epochs[1][0]  # another epoch, another order and split
    assert set(epochs[0][0]) != set(epochs[1][0])


def test_resume_mid_epoch_yields_exactly_the_rest(shards):
    _, root = shards
    full = ShardDataset(root, seed=1, buffer=5, rank=1, world_size=2, workers=2)
    full.set_epoch(2)
    expected = _ids(DataLoader(full, batch_size=2, num_workers=2))

    ds = ShardDataset(root, seed=1, buffer=5, rank=1, world_size=2, workers=2)
    ds.set_epoch(2)
    progress, first = ShardProgress(ds), []
    for k, batch in enumerate(DataLoader(ds, batch_size=2, num_workers=2)):
        if k == 3:  # pre-empted after three batches (prefetched batches were never consumed); worker 1's is next
            break
        progress.update(batch)
        first += batch["id"]
    state = json.loads(json.dumps(progress.state_dict()))  # as stored in a checkpoint

    again = ShardDataset(root, seed=1, buffer=5, rank=1, world_size=2, workers=2)
    again.load_state_dict(state)
    rest = []
    for batch in DataLoader(again, batch_size=2, num_workers=2):
        rest += batch["id"]
        for slot, pos in zip(batch["slot"].tolist(), batch["position"].tolist()):
            assert pos >= state["consumed"].get(str(slot), 0)
    assert len(first) + len(rest) == len(expected) and sorted(first + rest) == sorted(expected)
    assert first + rest == expected  # and in the same order: the resumed loader starts at the saved next worker
    assert len(again) == len(rest)
    with pytest.raises(ValueError, match="cannot continue on 2 x 1 mid-epoch"):
        ShardDataset(root, rank=1, world_size=2, workers=1).load_state_dict(state)


def test_rows_come_from_meta_jsonl_or_else_from_the_members(shards, tmp_path):
    import shutil

    cache, root = shards
    ref = CTCacheDataset(cache)
    rows = read_rows(root)
    assert [r["id"] for r in rows] == ref.ids and [r["report"] for r in rows] == [e["report"] for e in ref.entries]
    old = tmp_path / "old"  # a set written before meta.jsonl existed
    shutil.copytree(root, old)
    (old / META).unlink()
    index = json.loads((old / INDEX).read_text())
    del index["meta"]
    (old / INDEX).write_text(json.dumps(index))
    assert read_rows(old) == rows


def test_slices_and_buffer_are_permutations():
    slices = epoch_slices([4, 0, 7, 3], seed=0, epoch=0, ranks=3, workers=2)
    flat = np.concatenate(slices)
    assert sorted(flat.tolist()) == list(range(14)) and {len(s) for s in slices} <= {2, 3}
    order = slot_order(np.arange(50), 8, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    assert max(abs(int(p) - i) for i, p in enumerate(order)) < 50  # the buffer only delays: bounded lead
    assert all(int(p) <= i + 7 for i, p in enumerate(order))  # nothing comes out before it entered the buffer


def test_shards_read_through_an_fsspec_url(shards):
    fsspec = pytest.importorskip("fsspec")
    _, root = shards
    fs = fsspec.filesystem("memory")
    for path in root.iterdir():
        fs.pipe(f"/ctx-shards/{path.name}", path.read_bytes())
    got = sorted(_ids(DataLoader(ShardDataset("memory://ctx-shards", buffer=3), batch_size=4)))
    assert got == sorted(CTCacheDataset(shards[0]).ids)


def test_shard_command_writes_and_verifies(tmp_path):
    from ctxray.cli import main

    cache = make_cache(tmp_path / "cache", n=6)
    assert main(["shard", str(cache), "--out", str(tmp_path / "s"), "--split", "train", "--shard-mb", "0.01"]) == 0
    index = json.loads((tmp_path / "s" / INDEX).read_text())
    assert index["count"] == 4 and len(index["shards"]) >= 2 and index["split"] == "train"
    assert main(["shard", "--verify", str(tmp_path / "s")]) == 0
    with open(tmp_path / "s" / index["shards"][0]["name"], "r+b") as f:
        f.seek(600)
        f.write(b"x")
    assert main(["shard", "--verify", str(tmp_path / "s")]) == 1
    assert main(["shard", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")]) == 2


def test_the_webdataset_library_reads_the_shards(shards, tmp_path):
    wds = pytest.importorskip("webdataset")
    cache, root = shards
    gz = tmp_path / "gz"
    write_shards(cache, gz, compress="gzip", shard_bytes=40_000)
    ref = CTCacheDataset(cache)
    for folder, ext in ((root, "npy"), (gz, "npy.gz")):
        urls = sorted(str(p) for p in folder.glob("shard-*.tar"))
        got = {s["json"]["id"]: s[ext] for s in wds.WebDataset(urls, shardshuffle=False).decode()}
        assert sorted(got) == sorted(ref.ids)
        for k, vid in enumerate(ref.ids):
            np.testing.assert_array_equal(got[vid], np.load(cache / ref.entries[k]["file"]))
