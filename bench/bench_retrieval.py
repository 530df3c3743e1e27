"""Retrieval at MIMIC-CXR x CT-RATE scale: exact blocked top-k vs FAISS, time, peak memory, recall, floor.

Random unit vectors of the teacher's width stand in for report embeddings (no text encoding):
227,000 gallery reports (MIMIC-CXR) x 50,000 CT reports (CT-RATE). The floor is the matrix
product's FLOPs (2 * N * Q * D) at the machine's measured matmul rate on the same block shape.
Random vectors are the worst case for FAISS (no clusters), so its recall here is a lower bound.

Peak memory: each method runs in a fresh spawned process that builds the same seeded data; the figure
is its resident-set high-water mark (VmHWM) minus its resident size once the data exist. Linux only.

Usage::

    python bench/bench_retrieval.py [--scale 1.0] [--dim 256] [--k 5] [--threads 1] [--faiss ivf,hnsw]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctxray.utils.machine import describe_machine

GALLERY, QUERIES = 227_000, 50_000


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _data(n: int, q: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    gallery = F.normalize(torch.randn(n, dim, generator=gen), dim=-1)
    return gallery, F.normalize(torch.randn(q, dim, generator=gen), dim=-1)


def _run(method: str, n: int, q: int, dim: int, k: int, seed: int, threads: int) -> tuple[float, float, np.ndarray]:
    """One method in this (fresh) process: seconds, peak MiB above the data, indices (Q, k)."""
    import faiss

    from ctxray.retrieval import exact_topk, faiss_topk

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    gallery, queries = _data(n, q, dim, seed)
    base = _status_kib("VmRSS")
    t = time.perf_counter()
    if method == "exact":
        _, idx = exact_topk(queries, gallery, k)
    else:
        _, idx = faiss_topk(queries, gallery, k, kind=method.split("-", 1)[1], seed=seed)
    seconds = time.perf_counter() - t
    return seconds, (_status_kib("VmHWM") - base) / 1024, idx.numpy()


def matmul_gflops(dim: int, rows: int = 1024, cols: int = 32768, repeats: int = 3) -> float:
    """Measured float32 matmul rate on the exact search's block shape (rows x dim) @ (dim x cols)."""
    a, b = torch.randn(rows, dim), torch.randn(cols, dim)
    a @ b.T  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b.T
        best = min(best, time.perf_counter() - t)
    return 2 * rows * cols * dim / best / 1e9


def recall(exact: np.ndarray, approx: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(exact.tolist(), approx.tolist())]))


def main() -> None:
    from ctxray.teacher.builtin import XrayCLIPConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of both sizes to run")
    parser.add_argument("--dim", type=int, default=XrayCLIPConfig().embed_dim, help="teacher width")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--faiss", default="ivf,hnsw", help="FAISS kinds to run (comma list, '' for none)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(describe_machine())
    n, q = int(GALLERY * args.scale), int(QUERIES * args.scale)
    data_mib = (n + q) * args.dim * 4 / 2**20
    print(f"gallery {n:,} x queries {q:,} x dim {args.dim}, k={args.k}, threads={args.threads}, "
          f"scale {args.scale} of the goal {GALLERY:,} x {QUERIES:,}; inputs {data_mib:.0f} MiB")

    rate = matmul_gflops(args.dim)
    flops = 2.0 * n * q * args.dim
    floor = flops / (rate * 1e9)
    print(f"matmul rate {rate:.1f} GFLOP/s; product {flops / 1e12:.2f} TFLOP -> floor {floor:.1f} s")

    def run(method: str) -> tuple[float, float, np.ndarray]:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(_run, method, n, q, args.dim, args.k, args.seed, args.threads).result()

    t_exact, peak, exact = run("exact")
    print(f"exact (blocked, 2^25 floats/block): {t_exact:.1f} s ({t_exact / floor:.2f}x floor), "
          f"peak +{peak:.0f} MiB; goal: within 2x of the floor, memory bounded by the block (128 MiB)")
    for kind in [s for s in args.faiss.split(",") if s]:
        t_f, peak, approx = run(f"faiss-{kind}")
        print(f"faiss-{kind} (defaults; build + search): {t_f:.1f} s ({t_f / floor:.2f}x floor), "
              f"peak +{peak:.0f} MiB, recall@{args.k} {recall(exact, approx):.3f}; "
              f"goal: faster than exact at recall >= 0.9")


if __name__ == "__main__":
    main()
