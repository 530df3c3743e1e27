"""``ctxray evaluate``: zero-shot classification and report<->volume retrieval metrics of a trained model."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run folder (ctxray train --out) or a checkpoint folder")
    parser.add_argument("--cache", required=True, help="a volume cache folder (ctxray preprocess --out)")
    parser.add_argument("--split", default="valid", help="cache split to evaluate ('all' for every volume)")
    parser.add_argument("--out", required=True, help="output folder: metrics.json, per_label.csv, scores.csv, ROC PNGs")
    parser.add_argument("--labels", default=None, help="label/prompt file (schema of resources/labels.json)")
    parser.add_argument("--threshold-split", default=None,
                        help="split on which Youden thresholds are chosen (default: the evaluated split, stated)")
    parser.add_argument("--batch-size", type=int, default=4, help="volumes per forward pass")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for 95%% CIs (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:i]")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")


def run(args: argparse.Namespace) -> int:
    from ctxray.evaluate.run import evaluate_checkpoint

    split = None if args.split == "all" else args.split
    evaluate_checkpoint(args.checkpoint, args.cache, args.out, split=split, labels=args.labels,
                        threshold_split=args.threshold_split, batch_size=args.batch_size,
                        n_boot=args.bootstrap, seed=args.seed, device=args.device, workers=args.workers)
    return 0
