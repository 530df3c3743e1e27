"""Benchmark: time to write a synthetic world and its size on disk.

Usage:
    python bench/bench_synth.py [--preset demo] [--workers 1] [--out DIR]

Prints wall-clock and CPU seconds (this process and its workers), volumes and radiographs per
second, and the bytes written per part of the world. Without ``--out`` the world goes to a
temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench(out: Path, preset: str, workers: int) -> dict:
    from ctxray.synth.world import generate_world

    t0, c0 = time.perf_counter(), _cpu_seconds()
    info = generate_world(out, preset=preset, seed=0, workers=workers)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    counts = info["counts"]
    n_ct = counts["ct_train"] + counts["ct_valid"]
    volumes = out / "ct-rate" / "dataset"
    return {
        "preset": preset, "workers": workers, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
        "ct_volumes": n_ct, "xrays": counts["xray"], "ct_shape_zyx": info["ct_shape_zyx"],
        "xray_size": info["xray_size"],
        "bytes_ct_volumes": sum(_size(volumes / d) for d in ("train_fixed", "valid_fixed")),
        "bytes_ct_csv_and_truth": _size(volumes) - sum(_size(volumes / d) for d in ("train_fixed", "valid_fixed"))
        + (out / "ct-rate" / "ground_truth.jsonl").stat().st_size,
        "bytes_xray": _size(out / "xray"), "bytes_total": _size(out),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")
    if args.out is not None:
        result = bench(args.out, args.preset, args.workers)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = bench(Path(tmp), args.preset, args.workers)
    from ctxray.utils.machine import describe_machine, machine_info

    result["machine"] = machine_info()
    print(describe_machine(result["machine"]))
    print(json.dumps(result, indent=2))
    print(f"{result['preset']}: {result['wall_s']} s wall ({result['cpu_s']} CPU-s, {args.workers} worker(s)), "
          f"{result['bytes_total'] / 2**20:.0f} MiB on disk "
          f"({result['bytes_ct_volumes'] / 2**20:.0f} MiB CT volumes, {result['bytes_xray'] / 2**20:.0f} MiB X-ray)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
