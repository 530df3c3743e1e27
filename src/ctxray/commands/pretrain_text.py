"""``ctxray pretrain-text``: fit a scratch report tower to the zero-shot prompts on the training reports.

Examples::

    ctxray pretrain-text --cache C --out T
    ctxray pretrain-text --cache C --out T --set steps=1000 --set embed_dim=512
    ctxray train --config configs/demo.yaml --cache C --retrieval R --text-dir T --out RUN
"""

from __future__ import annotations

import argparse
import json
import logging

from ctxray.config import load_config

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, help="preprocess cache folder: its training reports are read")
    parser.add_argument("--out", required=True, help="report-tower folder: config.json, model.safetensors, "
                                                     "tokenizer/, metrics.json")
    parser.add_argument("--config", help="YAML or JSON ReportTowerConfig (defaults: the demo's tower, 600 steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set steps=1000 --set text.hidden=128 (repeatable)")


def run(args: argparse.Namespace) -> int:
    from ctxray.train.config import ReportTowerConfig
    from ctxray.train.report_tower import pretrain_report_tower

    try:
        cfg = load_config(ReportTowerConfig, args.config, list(args.overrides))
        metrics = pretrain_report_tower(args.cache, args.out, cfg)
    except (ValueError, FileNotFoundError) as err:
        log.error("ctxray pretrain-text: %s", err, exc_info=args.verbose > 0)
        return 2
    after = metrics["prompts_on_reports"]["after"]
    log.info("prompts on the reports: %s", json.dumps({k: None if v["macro"] is None else round(v["macro"], 4)
                                                        for k, v in after.items()}))
    return 0
