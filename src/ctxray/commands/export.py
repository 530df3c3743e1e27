"""``ctxray export``: write a self-describing model folder from a training run.

Exit status: 0 on success, 2 when an input is unusable (no checkpoint, metrics measured on another
checkpoint, an untrusted tokenizer...), with the reason on one line.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder (ctxray train --out RUN) or a checkpoint folder")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--decoder", default=None, help="report generator folder to include (ctxray generate)")
    parser.add_argument("--metrics", default=None,
                        help="evaluation metrics.json with per-label thresholds chosen on validation "
                             "(default: threshold 0.5 for every label, stated in the model card)")
    parser.add_argument("--spec", default=None, help="preprocessing spec.json (default: the run's cache)")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="which checkpoint of a run folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    parser.add_argument("--localisation", default=None, metavar="POINTING_JSON",
                        help="bench/pointing_game.py --json output measured on this model: labels whose maps it "
                             "validated get heatmaps by default in predict (without it: none, stated in the card)")


def run(args: argparse.Namespace) -> int:
    from ctxray.inference.export import export_model

    try:
        out = export_model(args.run, args.out, decoder=args.decoder, metrics=args.metrics, spec=args.spec,
                           prefer=args.checkpoint, overwrite=args.overwrite, localisation=args.localisation)
    except (OSError, ValueError) as err:  # a wrong input: one clear line, no traceback
        log.error("%s", " ".join(str(err).split()))
        return 2
    print(out)
    return 0
