"""``ctxray train``: train the CT-report dual encoder with the BIUD losses (one process or torchrun).

Examples::

    ctxray pretrain-text --cache C --out T
    ctxray train --config configs/demo.yaml --cache C --retrieval R --text-dir T --out RUN
    ctxray train --config configs/demo.yaml --shards S --cache C --retrieval R --out RUN   # stream train
    ctxray train --config configs/demo.yaml --out RUN --set loss.srkd=0 --set optim.epochs=5
    ctxray train --out RUN --resume
    torchrun --nproc_per_node 4 -m ctxray.cli train --config configs/demo.yaml --out RUN
"""

from __future__ import annotations

import argparse
import json
import logging

from ctxray.config import load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON TrainConfig (defaults when omitted)")
    parser.add_argument("--out", required=True, help="run folder: config, log.jsonl, tb/, checkpoints/{last,best}")
    parser.add_argument("--cache", help="preprocess cache folder (sets data.cache)")
    parser.add_argument("--shards", help="shard set of the training split, folder or fsspec URL (sets data.shards)")
    parser.add_argument("--retrieval", help="retrieval folder with teacher targets (sets data.retrieval)")
    parser.add_argument("--teacher", help="teacher folder; with --set text_init=teacher (sets teacher_dir)")
    parser.add_argument("--text-dir", help="a pre-trained report tower (ctxray pretrain-text --out T); with "
                                           "text_init: pretrained (sets text_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set loss.pkd=0 --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue RUN/checkpoints/last with the run's saved config (same trajectory)")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop after this many optimiser steps of this invocation (schedule unchanged)")


def run(args: argparse.Namespace) -> int:
    from ctxray.train.config import TrainConfig
    from ctxray.train.loop import train

    overrides = list(args.overrides)
    for flag, key in ((args.cache, "data.cache"), (args.shards, "data.shards"), (args.retrieval, "data.retrieval"),
                      (args.teacher, "teacher_dir"), (args.text_dir, "text_dir")):
        if flag:
            overrides.append(f"{key}={flag}")
    if args.resume and not args.config and not overrides:
        from ctxray.train.setup import stored_config

        config = stored_config(args.out)
    else:
        config = load_config(TrainConfig, args.config, overrides)
    try:
        result = train(config, args.out, resume=args.resume, stop_after=args.stop_after)
    except (ValueError, FileNotFoundError) as err:  # a setting or the data cannot run: say why (-v: traceback)
        log.error("ctxray train: %s", err, exc_info=args.verbose > 0)
        return 2
    log.info("final: %s", json.dumps({k: v for k, v in result.items() if k != "run_dir"}, default=str))
    return 0
