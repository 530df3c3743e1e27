"""Benchmark: CPU seconds of the synthetic world under a reference source tree and under this one, side by side.

Usage:
    git archive main src | tar -x -C /tmp/ref   # the reference code
    python bench/synth_speedup.py --ref-src /tmp/ref/src [--preset demo] [--xrays 200] [--scans 20] [--repeats 2]
    python bench/synth_speedup.py --ref-src /tmp/ref/src --world   # bench/bench_synth.py's whole world instead

Each run is a fresh process (``bench/synth_identity.py`` renders the subset, ``bench/bench_synth.py --workers 1``
the world); runs alternate between the trees so load on the machine hits both alike. Prints each run's
CPU seconds, the best of each tree and their ratio.
"""

from __future__ import annotations

import argparse
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


def run_once(src: Path, args: argparse.Namespace) -> float:
    """CPU seconds of one run with ``src`` first on ``PYTHONPATH``."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "CTXRAY_NO_PROGRESS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.world:
            cmd = [sys.executable, str(HERE / "bench_synth.py"), "--preset", args.preset, "--workers", "1"]
        else:
            cmd = [sys.executable, str(HERE / "synth_identity.py"), "record", str(Path(tmp) / "d.json"),
                   "--preset", args.preset, "--xrays", str(args.xrays), "--scans", str(args.scans)]
        c0 = _cpu_children()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return _cpu_children() - c0


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
    best: dict[str, float] = {}
    for rep in range(args.repeats):
        for name, src in trees.items():
            cpu = run_once(src, args)
            best[name] = min(best.get(name, cpu), cpu)
            print(f"run {rep + 1} {name:9s} {cpu:7.1f} CPU-s", flush=True)
    what = f"{args.preset} world" if args.world else f"{args.preset}: {args.scans} CT scans + {args.xrays} radiographs"
    print(f"{what}: reference {best['reference']:.1f} CPU-s, this {best['this']:.1f} CPU-s, "
          f"speed-up x{best['reference'] / best['this']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
