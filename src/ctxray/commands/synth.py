"""``ctxray synth``: write the synthetic chest world."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctxray.synth.presets import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="world size (default: tiny)")
    parser.add_argument("--seed", type=int, default=0, help="world seed; same seed, same bytes (default: 0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="rendering processes; the output does not depend on it "
                             "(default: 1 for tiny, else the CPU count up to 8)")


def run(args: argparse.Namespace) -> int:
    from ctxray.synth.world import generate_world

    generate_world(args.out, preset=args.preset, seed=args.seed, workers=args.workers)
    return 0
