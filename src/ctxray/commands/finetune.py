"""``ctxray finetune``: linear probe / full fine-tune of the CT encoder with label fractions, vs scratch."""

from __future__ import annotations

import argparse


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--fractions {text!r}: {err}") from err
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"--fractions {text!r}: give comma-separated values in (0, 1]")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run folder (ctxray train --out) or a checkpoint folder")
    parser.add_argument("--cache", required=True, help="a labelled volume cache (ctxray preprocess --out)")
    parser.add_argument("--out", required=True, help="output folder: metrics.json, summary.csv")
    parser.add_argument("--mode", choices=["probe", "full"], default="probe",
                        help="probe: frozen encoder + logistic regression; full: fine-tune encoder + head")
    parser.add_argument("--fractions", type=_fractions, default=[0.01, 0.1, 1.0],
                        help="label fractions of the training split (nested seeded subsets)")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--eval-split", default="valid")
    parser.add_argument("--no-scratch", action="store_true", help="skip the from-scratch comparison")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of full fine-tuning")
    parser.add_argument("--probe-steps", type=int, default=200, help="L-BFGS iterations of the linear probe")
    parser.add_argument("--lr", type=float, default=1e-3, help="head learning rate (encoder: 0.1x in full mode)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates for 95%% CIs (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:i]")


def run(args: argparse.Namespace) -> int:

    from ctxray.evaluate.finetune import FinetuneSettings, finetune_checkpoint

    settings = FinetuneSettings(epochs=args.epochs, probe_steps=args.probe_steps, lr=args.lr,
                                batch_size=args.batch_size, n_boot=args.bootstrap)
    finetune_checkpoint(args.checkpoint, args.cache, args.out, mode=args.mode, fractions=args.fractions,
                        train_split=args.train_split, eval_split=args.eval_split, seed=args.seed,
                        scratch=not args.no_scratch, settings=settings, device=args.device)
    return 0
