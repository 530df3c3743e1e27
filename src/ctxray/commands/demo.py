"""``ctxray demo``: the whole pipeline on the synthetic world (see ``ctxray.demo``)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--preset", default="demo", choices=["tiny", "demo"], help="size (default demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world and every stage")
    parser.add_argument("--workers", type=int, default=2, help="preprocessing worker processes (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--one-process", action="store_true",
                        help="run every stage in turn in this process (default: the report tower trains in a second "
                             "process beside the expert and retrieval, on half the threads)")


def run(args: argparse.Namespace) -> int:
    from ctxray.demo import run_demo, summary_markdown

    summary = run_demo(args.out, preset=args.preset, seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                       parallel=not args.one_process)
    print(summary_markdown(summary))
    return 0
