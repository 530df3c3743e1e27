"""Storage and read throughput: a volume cache (one .npy per volume) vs tar shards (plain and gzip).

Writes the cache's train split as shards (``--work``), then reads one epoch of each through a DataLoader
(batch 4, shuffled) with 0, 1 and 2 workers, and prints bytes per volume and volumes per second. Files are read
from the page cache after writing, so the figures are decode and Python costs, not disk or network speed.
Extrapolates disk use to ``--extrapolate`` volumes at the cache's own shape and at the ctclip preset.

    .venv/bin/python bench/bench_shards.py --cache CACHE --work DIR [--workers 0 1 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")


def _epoch(dataset, workers: int, shuffle: bool) -> tuple[int, float]:
    from torch.utils.data import DataLoader

    kw = {"shuffle": True, "generator": torch.Generator().manual_seed(0)} if shuffle else {}
    loader = DataLoader(dataset, batch_size=4, num_workers=workers, worker_init_fn=_one_thread, **kw)
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch["id"])
    return n, time.perf_counter() - t0


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--extrapolate", type=int, default=50_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from ctxray.utils.machine import describe_machine
    print(describe_machine(), flush=True)
    torch.set_num_threads(1)

    from ctxray.data.dataset import CTCacheDataset
    from ctxray.data.shards import ShardDataset, write_shards

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    cache = CTCacheDataset(args.cache, split=args.split)
    n = len(cache)
    cache_bytes = sum((cache.cache_dir / e["file"]).stat().st_size for e in cache.entries)
    rows = [{"format": "cache (.npy per volume)", "bytes_per_volume": cache_bytes / n}]
    stores = {}
    for compress in ("none", "gzip"):
        t0 = time.perf_counter()
        index = write_shards(args.cache, work / compress, split=args.split, shard_bytes=64 << 20, compress=compress)
        stores[compress] = work / compress
        rows.append({"format": f"shards ({compress})", "bytes_per_volume": sum(s["bytes"] for s in index["shards"]) / n,
                     "write_volumes_per_s": n / (time.perf_counter() - t0), "shards": len(index["shards"])})
    for w in args.workers:
        got, sec = _epoch(cache, w, shuffle=True)
        rows[0][f"read_vps_w{w}"] = got / sec
        for k, compress in enumerate(("none", "gzip"), start=1):
            got, sec = _epoch(ShardDataset(stores[compress], buffer=64, workers=max(1, w)), w, shuffle=False)
            assert got == n, (got, n)
            rows[k][f"read_vps_w{w}"] = got / sec
    shape = cache.spec.shape_zyx
    ctclip = 240 * 480 * 480 * 2  # float16 bytes of one ctclip-preset volume
    print(f"{n} volumes of {shape} ({cache.spec.dtype}); reads: DataLoader batch 4, 1 thread per process")
    head = "".join(f" {'vol/s w' + str(w):>10}" for w in args.workers)
    print(f"{'format':<26} {'kB/volume':>10} {'ratio':>6}{head}   TB for {args.extrapolate} at ctclip")
    for r in rows:
        ratio = r["bytes_per_volume"] / rows[0]["bytes_per_volume"]
        speeds = "".join(f" {r[f'read_vps_w{w}']:>10.1f}" for w in args.workers)
        print(f"{r['format']:<26} {r['bytes_per_volume'] / 1e3:>10.1f} {ratio:>6.3f}{speeds}   "
              f"{args.extrapolate * ctclip * ratio / 1e12:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": n, "shape": shape, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
