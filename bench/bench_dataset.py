"""Read throughput of ``CTCacheDataset`` (volumes/s, one process, no DataLoader workers).

A cache of float16 volumes is written at the demo shape (48x96x96) and at the Merlin-like shape
(160x224x224); every item is then read once as training reads it (memory-map, decode to float32,
torch tensor), without and with augmentation (random crop to 7/8 of each side + intensity jitter).
The files were just written, so they come from the page cache (warm): a cold read adds the disk's time.

    .venv/bin/python bench/bench_dataset.py [--n-demo 200] [--n-merlin 24]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctxray.utils.machine import describe_machine

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")


def make_cache(root: Path, shape: tuple[int, int, int], n: int) -> Path:
    from ctxray.data.cache import write_npy
    from ctxray.data.spec import PreprocessSpec

    spec = PreprocessSpec("bench", (1.0, 1.0, 1.0), shape, dtype="float16")
    spec.save(root / "spec.json")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        arr = rng.random(shape, dtype=np.float32).astype(np.float16)
        sha, nbytes = write_npy(root / "volumes" / f"v{i:04d}.npy", arr)
        lines.append(json.dumps({"id": f"v{i:04d}", "file": f"volumes/v{i:04d}.npy", "split": "train",
                                 "report": "r", "labels": [0.0] * 18, "sha256": sha, "nbytes": nbytes}))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


def read_all(ds) -> float:
    t = time.perf_counter()
    total = 0.0
    for i in range(len(ds)):
        total += float(ds[i]["volume"][0, 0, 0, 0])  # touch the tensor
    return len(ds) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-demo", type=int, default=200)
    ap.add_argument("--n-merlin", type=int, default=24)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from ctxray.data.dataset import Augment, CTCacheDataset

    print(describe_machine())  # 1 torch thread; other processes may share the cores: absolute rates vary
    for name, shape, n in (("demo", (48, 96, 96), args.n_demo), ("merlin", (160, 224, 224), args.n_merlin)):
        with tempfile.TemporaryDirectory() as d:
            cache = make_cache(Path(d), shape, n)
            mb = int(np.prod(shape)) * 2 / 1e6
            plain = read_all(CTCacheDataset(cache))
            crop = tuple(s * 7 // 8 for s in shape)
            aug = read_all(CTCacheDataset(cache, augment=Augment(crop_zyx=crop, scale=0.1, shift=0.05), seed=0))
            print(f"{name:<7} {shape}  {n} volumes of {mb:.1f} MB: {plain:7.1f} vol/s ({plain * mb:6.0f} MB/s) plain, "
                  f"{aug:7.1f} vol/s with crop+intensity augmentation")


if __name__ == "__main__":
    main()
