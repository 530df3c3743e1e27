"""The ``ctxray`` command line: a thin dispatcher.

Each command lives in ``ctxray.commands.<name>`` as two functions, ``add_arguments(parser)`` and
``run(args) -> int``, which parse options and call the library. Command modules are imported only
when their command runs, so ``ctxray --help`` is instant and no command pays for another's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ctxray import __version__
from ctxray.utils.logging import setup_logging

# name -> (module, one-line help). The order is the pipeline's order.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("ctxray.commands.synth", "write the synthetic chest world (CT-RATE layout + X-ray gallery)"),
    "preprocess": ("ctxray.commands.preprocess", "CT-RATE / RAD-ChestCT / NIfTI / DICOM -> volume cache"),
    "shard": ("ctxray.commands.shard", "volume cache -> tar shards (WebDataset layout, SHA-256) for streaming"),
    "teacher": ("ctxray.commands.teacher", "train or embed with the X-ray expert (teacher)"),
    "retrieve": ("ctxray.commands.retrieve", "language-guided CT report -> X-ray retrieval, cache teacher targets"),
    "pretrain-text": ("ctxray.commands.pretrain_text", "fit a report tower to the zero-shot prompts on the reports"),
    "train": ("ctxray.commands.train", "train the CT-report dual encoder (BIUD losses), CPU or torchrun"),
    "evaluate": ("ctxray.commands.evaluate", "zero-shot classification and report<->volume retrieval metrics"),
    "finetune": ("ctxray.commands.finetune", "linear probe / fine-tune the CT encoder with label fractions"),
    "generate": ("ctxray.commands.generate", "train a report decoder or write reports for volumes"),
    "export": ("ctxray.commands.export", "write a self-describing model folder from a training run"),
    "predict": ("ctxray.commands.predict", "run a model folder on scans: findings, report, heatmaps, HTML"),
    "demo": ("ctxray.commands.demo", "the whole pipeline on the synthetic world, small"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in COMMANDS)
    lines = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="ctxray",
        description="Chest-CT understanding by distilling knowledge from X-ray expert models.",
        epilog=f"commands:\n{lines}\n\nRun 'ctxray COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ctxray {__version__}")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status so tests can call it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] not in COMMANDS:
        args = top.parse_args(argv[:1])  # --help / --version / unknown command exit here
        top.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"ctxray {name}", description=COMMANDS[name][1])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    setup_logging(args.verbose)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
