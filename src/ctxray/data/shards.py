"""Sharded streaming storage for a volume cache: WebDataset-layout tar shards, split exactly across ranks and workers.

A shard folder holds ``shard-000000.tar``, ... and ``shards.json``. Each tar holds, per volume, two members named
by an 8-digit key (the WebDataset convention: ``KEY.EXT``, grouped by key): ``KEY.npy`` (the cached array, as in
the cache; ``KEY.npy.gz`` when compressed) and ``KEY.json`` (id, report, labels, split). Any tar tool or the
``webdataset`` library reads them. ``shards.json`` lists every shard's SHA-256, size and the byte offset of each
member, so a reader seeks straight to a volume (locally or through an fsspec URL) and can split an epoch by
sample rather than by shard.

Why our own reader and not ``webdataset``'s pipeline: an epoch must reach every volume exactly once over all DDP
ranks and DataLoader workers and resume mid-epoch. ``webdataset`` splits by whole shards (ranks get unequal
counts unless shards divide evenly) and its shuffle buffer keeps no resumable state. Here the epoch's order is a
pure function of ``(seed, epoch)``: shards are permuted, their volumes concatenated into one stream, the stream
cut into ``ranks x workers`` contiguous slices (sizes differing by at most one), and each slice shuffled by a
bounded buffer. Resuming replays that order on indices only and skips what was consumed.

Example::

    write_shards("cache", "shards", split="train", shard_bytes=256 << 20)
    ds = ShardDataset("shards", seed=0, buffer=64)          # rank / world from torch.distributed
    loader = DataLoader(ds, batch_size=4, num_workers=2)
    progress = ShardProgress(ds)
    for batch in loader:
        progress.update(batch)                               # store progress.state_dict() in a checkpoint
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ctxray.data.dataset import Augment, CTCacheDataset
from ctxray.data.spec import PreprocessSpec
from ctxray.utils.io import atomic_write_text, sha256_file

__all__ = ["INDEX", "META", "ShardDataset", "ShardProgress", "epoch_slices", "read_rows", "slot_order",
           "verify_shards", "write_shards"]

log = logging.getLogger(__name__)

INDEX = "shards.json"
META = "meta.jsonl"  # one row per volume in index order: key, id, report, labels, split (no volume bytes)
FORMAT = "ctxray-shards"
VERSION = 1
Compression = Literal["none", "gzip"]


# ---- writing ---------------------------------------------------------------------------------------------------

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Append one member; return (offset of its data in the tar, its size)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # no times or owners: same input, same bytes
    tar.addfile(info, io.BytesIO(data))
    padded = -(-len(data) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE  # data is padded to whole 512-byte blocks
    return tar.offset - padded, len(data)


def write_shards(cache_dir: str | Path, out_dir: str | Path, split: str | None = None,
                 shard_bytes: int = 256 << 20, compress: Compression = "none", level: int = 3) -> dict[str, Any]:
    """Write a cache (``ctxray preprocess`` output) as tar shards plus ``shards.json`` and a copy of ``spec.json``.

    Args:
        cache_dir: the cache folder.
        out_dir: the shard folder to create (must not hold shards yet).
        split: keep only this split (None: all, each volume's split recorded).
        shard_bytes: start a new shard when the current one reaches this size.
        compress: ``gzip`` compresses each array member (``KEY.npy.gz``) at ``level``; ``none`` stores ``.npy``.

    Returns:
        The index written to ``shards.json``.
    """
    if compress not in ("none", "gzip"):
        raise ValueError(f"compress must be 'none' or 'gzip', got {compress!r}")
    cache = CTCacheDataset(cache_dir, split=split)
    out = Path(out_dir)
    if (out / INDEX).exists():
        raise FileExistsError(f"{out / INDEX}: shards already written here; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    tar, members, rows = None, [], []

    def close() -> None:
        if tar is None:
            return
        tar.close()
        path = out / shards[-1]["name"]
        shards[-1].update(bytes=path.stat().st_size, sha256=sha256_file(path), members=list(members))

    for i, entry in enumerate(cache.entries):
        if tar is None or tar.fileobj.tell() >= shard_bytes:
            close()
            shards.append({"name": f"shard-{len(shards):06d}.tar"})
            tar, members = tarfile.open(out / shards[-1]["name"], "w", format=tarfile.USTAR_FORMAT), []
        key = f"{i:08d}"
        array = (cache.cache_dir / entry["file"]).read_bytes()  # the cached .npy as it is
        name = f"{key}.npy.gz" if compress == "gzip" else f"{key}.npy"
        if compress == "gzip":
            array = gzip.compress(array, compresslevel=level, mtime=0)
        meta = {k: entry.get(k) for k in ("id", "report", "labels", "split")}
        vol = _add(tar, name, array)
        met = _add(tar, f"{key}.json", json.dumps(meta).encode())
        members.append({"key": key, "id": entry["id"], "volume": [name, *vol], "meta": list(met)})
        rows.append(json.dumps({"key": key, **meta}))
    close()
    index = {"format": FORMAT, "version": VERSION, "split": split, "count": len(cache.entries),
             "compress": compress, "spec": cache.spec.to_dict(), "meta": META, "shards": shards}
    cache.spec.save(out / "spec.json")
    atomic_write_text(out / META, "".join(r + "\n" for r in rows))
    atomic_write_text(out / INDEX, json.dumps(index, indent=1))
    log.info("%s: %d volumes in %d shards (%.1f MB)", out, len(cache.entries), len(shards),
             sum(s["bytes"] for s in shards) / 1e6)
    return index


def read_index(root: str) -> dict[str, Any]:
    with _open(f"{root.rstrip('/')}/{INDEX}") as f:
        index = json.loads(f.read())
    if index.get("format") != FORMAT or index.get("version") != VERSION:
        raise ValueError(f"{root}/{INDEX}: not a {FORMAT} v{VERSION} index")
    return index


def read_rows(root: str | Path, index: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every volume's id, report, labels and split, in index order, without reading volume bytes.

    Read from ``meta.jsonl`` (written since it was added); for older shard sets, from each member's ``KEY.json``
    (a seek per volume, which on object storage also pulls read-ahead blocks: re-write such sets).

    Args:
        root: the shard folder (local path or fsspec URL).
        index: its ``shards.json`` when already read.

    Returns:
        One dict per volume (``key``, ``id``, ``report``, ``labels``, ``split``).
    """
    root = str(root).rstrip("/")
    index = index if index is not None else read_index(root)
    if index.get("meta"):
        with _open(f"{root}/{index['meta']}") as f:
            rows = [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
        if len(rows) != index["count"]:
            raise ValueError(f"{root}/{index['meta']}: {len(rows)} rows, {INDEX} lists {index['count']} volumes")
        return rows
    log.warning("%s: no %s (written by an older ctxray shard); reading every member's JSON", root, META)
    rows = []
    for s in index["shards"]:
        with _open(f"{root}/{s['name']}") as f:
            for m in s["members"]:
                f.seek(m["meta"][0])
                rows.append({"key": m["key"], **json.loads(f.read(m["meta"][1]))})
    return rows


def verify_shards(root: str | Path, checksum: bool = True) -> list[str]:
    """Check every shard's size (and SHA-256) against ``shards.json``. Returns the problems found (empty: fine)."""
    index, problems = read_index(str(root)), []
    for s in index["shards"]:
        path = Path(root) / s["name"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != s["bytes"]:
            problems.append(f"{path}: {path.stat().st_size} bytes, index says {s['bytes']}")
        elif checksum and sha256_file(path) != s["sha256"]:
            problems.append(f"{path}: SHA-256 differs from the index")
    return problems


def _open(url: str):
    """A binary file for a local path or an fsspec URL (``s3://``, ``https://``, ...; fsspec installed)."""
    if "://" in url and not url.startswith("file://"):
        try:
            import fsspec
        except ImportError:
            raise ImportError(f"{url}: reading shards from a URL needs fsspec (pip install fsspec)") from None
        return fsspec.open(url, "rb").open()
    return open(url.removeprefix("file://"), "rb")


# ---- the epoch's order -----------------------------------------------------------------------------------------

def epoch_slices(counts: list[int], seed: int, epoch: int, ranks: int, workers: int) -> list[np.ndarray]:
    """The epoch's stream cut into ``ranks x workers`` slices of global sample indices (slot = rank * workers + w).

    Shards are permuted by ``(seed, epoch)``; their samples (global index = position in the index) are
    concatenated; the stream is cut into equal contiguous slices (sizes differ by at most one).
    """
    starts = np.concatenate([[0], np.cumsum(counts)])
    perm = np.random.default_rng([seed, epoch, 0]).permutation(len(counts))
    stream = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in perm]) if counts else np.zeros(0, int)
    slots = ranks * workers
    bounds = [len(stream) * k // slots for k in range(slots + 1)]
    return [stream[bounds[k]:bounds[k + 1]] for k in range(slots)]


def slot_order(indices: np.ndarray, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order a shuffle buffer of ``buffer`` samples emits a stream in (``buffer <= 1``: unchanged).

    The buffer fills, then each step emits a random element and refills from the stream; at the end it drains
    in random order. Computed on indices only, so a resumed epoch can skip what was consumed without reading it.
    """
    if buffer <= 1:
        return np.asarray(indices)
    pool, out = [], []
    for i in indices:
        pool.append(int(i))
        if len(pool) >= buffer:
            j = int(rng.integers(len(pool)))
            pool[j], pool[-1] = pool[-1], pool[j]
            out.append(pool.pop())
    rng.shuffle(pool)
    return np.asarray(out + pool, dtype=np.int64)


# ---- reading ---------------------------------------------------------------------------------------------------

def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardDataset(IterableDataset):
    """Stream a shard folder: each volume exactly once per epoch over all ranks and DataLoader workers.

    Args:
        root: the shard folder, a local path or an fsspec URL.
        seed: base seed of the shard permutation, the shuffle buffer and the augmentation.
        buffer: shuffle-buffer size per worker (1: the stream order).
        augment: an :class:`~ctxray.data.dataset.Augment` (or its fields), drawn from ``(seed, epoch, index)``
            exactly as :class:`~ctxray.data.dataset.CTCacheDataset` draws it.
        rank, world_size: this process's place among the DDP ranks (default: from ``torch.distributed``).
        workers: DataLoader workers per rank (default: read in each worker; give it to use :meth:`__len__`).
        verify: ``checksum`` hashes each shard the first time this process opens it; ``size`` checks sizes.

    Items: as ``CTCacheDataset`` (``id``, ``volume`` (1, D, H, W) float32 in [0, 1], ``report``, ``labels`` (18,),
    ``index``: the volume's position in ``shards.json``) plus ``slot`` (rank * workers + worker) and ``position``
    (the item's place in its slot's epoch order), which :class:`ShardProgress` counts to resume.

    Call :meth:`set_epoch` before each epoch (workers must not be persistent, or they keep the old epoch).
    """

    def __init__(self, root: str | Path, seed: int = 0, buffer: int = 64, augment: Augment | dict | None = None,
                 rank: int | None = None, world_size: int | None = None, workers: int | None = None,
                 verify: Literal["checksum", "size"] = "size") -> None:
        super().__init__()
        self.root = str(root).rstrip("/")
        self.index = read_index(self.root)
        self.spec = PreprocessSpec.from_dict(self.index["spec"])
        self.seed, self.buffer, self.epoch = int(seed), int(buffer), 0
        self.augment = Augment(**augment) if isinstance(augment, dict) else augment
        dist_rank, dist_world = _distributed()
        self.rank = dist_rank if rank is None else int(rank)
        self.world_size = dist_world if world_size is None else int(world_size)
        self.workers, self.verify = workers, verify
        self.skip: dict[int, int] = {}
        self.rotate = 0  # DataLoader worker w reads this rank's slot (w + rotate) % workers (see load_state_dict)
        self.members = [(k, m) for k, s in enumerate(self.index["shards"]) for m in s["members"]]
        self.counts = [len(s["members"]) for s in self.index["shards"]]
        self._checked: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (forgets a resume point of another epoch)."""
        if int(epoch) != self.epoch:
            self.skip, self.rotate = {}, 0
        self.epoch = int(epoch)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume mid-epoch from :meth:`ShardProgress.state_dict` (same ranks and workers per rank).

        A DataLoader hands out its workers' batches in turn starting at worker 0; the state names the slot whose
        batch came next, and worker 0 reads that slot (``rotate``), so the resumed batches come in the same order.
        """
        if (state["world_size"], state["workers"]) != (self.world_size, self.workers):
            raise ValueError(f"resume state from {state['world_size']} ranks x {state['workers']} workers cannot "
                             f"continue on {self.world_size} x {self.workers} mid-epoch; start the next epoch instead")
        self.epoch = int(state["epoch"])
        self.skip = {int(k): int(v) for k, v in state["consumed"].items()}
        self.rotate = int(state.get("next", {}).get(str(self.rank), 0))

    def __len__(self) -> int:
        """Items this rank yields this epoch (all its workers together; needs ``workers``)."""
        if self.workers is None:
            raise TypeError("ShardDataset has a length only when built with workers=")
        w = max(1, self.workers)
        slices = epoch_slices(self.counts, self.seed, self.epoch, self.world_size, w)
        return sum(len(s) - self.skip.get(self.rank * w + k, 0) for k, s in enumerate(slices[self.rank * w:][:w]))

    def order(self, slot: int, workers: int) -> np.ndarray:
        """Global indices slot ``slot`` yields this epoch, in order (before skipping)."""
        slices = epoch_slices(self.counts, self.seed, self.epoch, self.world_size, workers)
        return slot_order(slices[slot], self.buffer, np.random.default_rng([self.seed, self.epoch, 1, slot]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        if self.workers is not None and max(1, self.workers) != workers:
            raise ValueError(f"ShardDataset(workers={self.workers}) runs in a DataLoader with {workers} workers")
        slot = self.rank * workers + (worker + self.rotate) % workers
        order = self.order(slot, workers)
        files: dict[int, Any] = {}
        try:
            for position in range(self.skip.get(slot, 0), len(order)):
                yield self._item(int(order[position]), files) | {"slot": slot, "position": position}
        finally:
            for f in files.values():
                f.close()

    def _item(self, index: int, files: dict[int, Any]) -> dict[str, Any]:
        shard, member = self.members[index]
        if shard not in files:
            if len(files) >= 2:  # streams move through shards: keep the current and the next open
                files.pop(min(files)).close()
            files[shard] = self._open_shard(shard)
        f = files[shard]
        name, offset, size = member["volume"]
        f.seek(offset)
        data = f.read(size)
        f.seek(member["meta"][0])
        meta = json.loads(f.read(member["meta"][1]))
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        vol = PreprocessSpec.decode(np.load(io.BytesIO(data), allow_pickle=False))
        if self.augment is not None:
            vol = self.augment(vol, np.random.default_rng([self.seed, self.epoch, index]))
        return {"id": meta["id"], "volume": torch.from_numpy(np.ascontiguousarray(vol))[None],
                "report": meta.get("report") or "", "labels": torch.from_numpy(CTCacheDataset._labels(meta)),
                "index": index}

    def _open_shard(self, shard: int):
        s = self.index["shards"][shard]
        url = f"{self.root}/{s['name']}"
        if shard not in self._checked and self.verify == "checksum":
            h = hashlib.sha256()
            with _open(url) as f:
                while block := f.read(1 << 22):
                    h.update(block)
            if h.hexdigest() != s["sha256"]:
                raise OSError(f"{url}: SHA-256 differs from {INDEX}; the shard is damaged or was replaced")
        f = _open(url)
        if shard not in self._checked:
            f.seek(0, 2)
            if f.tell() != s["bytes"]:
                raise OSError(f"{url}: {f.tell()} bytes, {INDEX} says {s['bytes']}; the shard is incomplete")
            self._checked.add(shard)
        return f


class ShardProgress:
    """Counts what the training loop consumed of a :class:`ShardDataset` epoch, per slot, to resume mid-epoch.

    Args:
        dataset: the dataset the loader reads.
    """

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset
        self.consumed: dict[int, int] = dict(dataset.skip)
        self.next: dict[int, int] = {dataset.rank: dataset.rotate} if dataset.skip else {}

    def update(self, batch: dict[str, Any]) -> None:
        """Count a batch (collated ``slot`` values) as consumed."""
        slots = torch.as_tensor(batch["slot"]).reshape(-1).tolist()
        for slot in slots:
            self.consumed[int(slot)] = self.consumed.get(int(slot), 0) + 1
        if slots:  # the DataLoader's next batch comes from the next worker in turn
            w = max(1, self.dataset.workers or 1)
            rank, local = divmod(int(slots[-1]), w)
            self.next[rank] = (local + 1) % w

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready: epoch, ranks, workers, items consumed per slot, and per rank the slot read next."""
        return {"epoch": self.dataset.epoch, "world_size": self.dataset.world_size, "workers": self.dataset.workers,
                "consumed": {str(k): v for k, v in sorted(self.consumed.items())},
                "next": {str(k): v for k, v in sorted(self.next.items())}}
