"""``ctxray generate``: train a report decoder on a CT encoder, or write reports for volumes.

    ctxray generate train --checkpoint RUN --cache C --out G [--ctrate ROOT] [--config F] [--set a.b=c ...]
    ctxray generate run --model G (--cache C [--split valid] | --volumes V ...) --out DIR
    ctxray generate compare NAME=G [NAME=G ...] [--examples N]
    ctxray generate plan --checkpoint RUN --cache C --out G [--planner probe|zeroshot] [--seed N] [--ground-truth F]
                         [--calibration-cache C2]
"""

from __future__ import annotations

import argparse

from ctxray.config import load_config
from ctxray.generate.compare import examples, metrics_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="{train,plan,run,compare}")
    tr = sub.add_parser("train", help="train a decoder on a frozen CT encoder; evaluate it and the trivial baseline")
    tr.add_argument("--checkpoint", required=True, help="a training run or checkpoint folder (ctxray train --out)")
    tr.add_argument("--cache", required=True, help="the volume cache (ctxray preprocess --out)")
    tr.add_argument("--out", required=True, help="generator folder to write (weights, metrics.json, samples.jsonl)")
    tr.add_argument("--ctrate", default=None, help="CT-RATE-layout root, for separate Findings/Impression references")
    tr.add_argument("--config", default=None, help="GenerateConfig as JSON/YAML (default: built-in defaults)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set epochs=20 --set decoder.layers=2 (repeatable)")
    tr.add_argument("--encoder-init", choices=["checkpoint", "random"], default=None,
                    help="'random': same encoder architecture, re-initialised (the control)")
    tr.add_argument("--seed", type=int, default=None, help="seed (overrides the config's)")

    pl = sub.add_parser("plan", help="findings-first generator: planner on the CT encoder + training sentences")
    pl.add_argument("--checkpoint", required=True, help="a training run or checkpoint folder (ctxray train --out)")
    pl.add_argument("--cache", required=True, help="the volume cache (train split: planner and sentences)")
    pl.add_argument("--out", required=True, help="generator folder to write (metrics.json, samples.jsonl)")
    pl.add_argument("--planner", choices=["probe", "zeroshot"], default="probe",
                    help="per-label logistic probe on the training split, or the zero-shot prompts")
    pl.add_argument("--seed", type=int, default=0, help="seeds the probe's folds and solver")
    pl.add_argument("--eval-split", default="valid", help="split to evaluate on ('none': no evaluation)")
    pl.add_argument("--no-tune", action="store_true",
                    help="keep --set beta/wording instead of choosing them on the training split")
    pl.add_argument("--ground-truth", default=None, help="a synthetic world's ground_truth.jsonl (laterality check)")
    pl.add_argument("--calibration-cache", default=None,
                    help="a cache of volumes with reports the CT model never trained on: label thresholds, normal "
                         "gate and operating point are chosen on it instead of the training split (recommended)")
    pl.add_argument("--calibration-splits", default=None, help="its splits, comma-separated (default: all)")
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a PlannedConfig field, e.g. --set probe_c=0.05 (repeatable)")

    rn = sub.add_parser("run", help="write generated Findings + Impression per volume")
    rn.add_argument("--model", required=True, help="a generator folder (ctxray generate train --out)")
    rn.add_argument("--cache", default=None, help="a volume cache; references give metrics.json")
    rn.add_argument("--split", default="valid", help="cache split ('all' for every volume)")
    rn.add_argument("--volumes", nargs="+", default=None, help="NIfTI files, DICOM folders or .npz volumes")
    rn.add_argument("--ctrate", default=None, help="CT-RATE-layout root, for separate reference sections")
    rn.add_argument("--out", required=True, help="output folder: reports.csv, reports.jsonl (+ metrics.json)")
    rn.add_argument("--beams", type=int, default=None, help="beam width (1: greedy); default: the generator's")
    rn.add_argument("--max-new-tokens", type=int, default=None, help="longest report in tokens")
    rn.add_argument("--min-new-tokens", type=int, default=None, help="shortest report in tokens")
    rn.add_argument("--length-penalty", type=float, default=None, help="beam score / length ** this")

    cmp = sub.add_parser("compare", help="print a Markdown table of generators and the trivial baseline")
    cmp.add_argument("runs", nargs="+", metavar="NAME=G", help="display name and generator folder")
    cmp.add_argument("--examples", type=int, default=0, help="also print N generated/reference pairs per generator")


def _compare(args: argparse.Namespace) -> int:
    runs = {}
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep:
            raise SystemExit(f"ctxray generate compare: {item!r} is not NAME=FOLDER")
        runs[name] = folder
    print(metrics_table(runs))
    for name, folder in runs.items():
        if args.examples:
            print(f"\n### {name}\n\n{examples(folder, args.examples)}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from ctxray.generate.run import train_generator
    from ctxray.generate.train import GenerateConfig

    overrides = list(args.overrides)
    if args.encoder_init:
        overrides.append(f"encoder_init={args.encoder_init}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(GenerateConfig, args.config, overrides)
    train_generator(args.checkpoint, args.cache, args.out, cfg, ctrate_root=args.ctrate)
    return 0


def _plan(args: argparse.Namespace) -> int:
    from ctxray.generate.planned import PlannedConfig
    from ctxray.generate.run_planned import train_planned

    overrides = [*args.overrides, f"planner={args.planner}", f"seed={args.seed}"]
    cfg = load_config(PlannedConfig, None, overrides)
    split = None if args.eval_split == "none" else args.eval_split
    cal_splits = args.calibration_splits.split(",") if args.calibration_splits else None
    train_planned(args.checkpoint, args.cache, args.out, cfg, eval_split=split, tune=not args.no_tune,
                  ground_truth=args.ground_truth, calibration_cache=args.calibration_cache,
                  calibration_splits=cal_splits)
    return 0


def _run(args: argparse.Namespace) -> int:
    from ctxray.generate.run import run_generator

    changes = {"num_beams": args.beams, "max_new_tokens": args.max_new_tokens,
               "min_new_tokens": args.min_new_tokens, "length_penalty": args.length_penalty}
    split = None if args.split == "all" else args.split
    run_generator(args.model, args.out, cache=args.cache, split=split if args.cache else None,
                  volumes=args.volumes, decode_overrides={k: v for k, v in changes.items() if v is not None},
                  ctrate_root=args.ctrate)
    return 0


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "plan": _plan, "run": _run, "compare": _compare}[args.action](args)
