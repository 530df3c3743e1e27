"""Benchmark: CPU seconds of the synthetic world under a reference source tree and under this one, side by side.

Usage:
    git archive main src | tar -x -C /tmp/ref   # the reference code
    python bench/synth_speedup.py --ref-src /tmp/ref/src [--preset demo] [--xrays 200] [--scans 20] [--repeats 2]
    python bench/synth_speedup.py --ref-src /tmp/ref/src --world --repeats 1   # the whole world, one process

Each run is a fresh process of ``bench/synth_identity.py record`` (the subset, or with ``--world`` the whole
world at one worker); runs alternate between the trees so load on the machine hits both alike. Prints each
run's CPU seconds, the best of each tree, their ratio, and whether both trees wrote the same bytes (the
SHA-256 of every file).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_once(src: Path, args: argparse.Namespace) -> tuple[float, dict[str, str]]:
    """CPU seconds of one run with ``src`` first on ``PYTHONPATH``, and the digests of what it wrote."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "CTXRAY_NO_PROGRESS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        digests = Path(tmp) / "digests.json"
        cmd = [sys.executable, str(HERE / "synth_identity.py"), "record", str(digests), "--preset", args.preset,
               "--xrays", str(args.xrays), "--scans", str(args.scans), *(["--world"] if args.world else [])]
        c0 = _cpu_children()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return _cpu_children() - c0, json.loads(digests.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref-src", type=Path, required=True, help="the reference tree's src folder")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--xrays", type=int, default=200)
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--world", action="store_true", help="the whole world (bench_synth.py) instead of a subset")
    args = parser.parse_args(argv)
    trees = {"reference": args.ref_src.resolve(), "this": (HERE.parent / "src").resolve()}
    sys.path.insert(0, str(trees["this"]))
    from ctxray.utils.machine import describe_machine

    print(describe_machine(), flush=True)
    best: dict[str, float] = {}
    written: dict[str, dict[str, str]] = {}
    for rep in range(args.repeats):
        for name, src in trees.items():
            cpu, written[name] = run_once(src, args)
            best[name] = min(best.get(name, cpu), cpu)
            print(f"run {rep + 1} {name:9s} {cpu:7.1f} CPU-s", flush=True)
    what = f"{args.preset} world" if args.world else f"{args.preset}: {args.scans} CT scans + {args.xrays} radiographs"
    print(f"{what}: reference {best['reference']:.1f} CPU-s, this {best['this']:.1f} CPU-s, "
          f"speed-up x{best['reference'] / best['this']:.2f}")
    ref, this = written["reference"], written["this"]
    same = sum(ref[k] == this.get(k) for k in ref)
    print(f"bytes: {same} of {len(ref)} files identical" + ("" if ref == this else " -- THE TREES DIFFER"))
    return 0 if ref == this else 1


if __name__ == "__main__":
    sys.exit(main())
