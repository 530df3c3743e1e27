"""Seed checks on a finished demo folder (issue 13): the demo's plain and full CT-model runs with other
training seeds (collapsed steps, zero-shot macro AUROC), and the expert retrained with other seeds followed
by retrieval (exact / Jaccard agreement, hubness, normal CTs on abnormal X-rays).

    python bench/demo_seeds.py --demo demo_out --work W --what runs --seeds 1 2 3 4
    python bench/demo_seeds.py --demo demo_out --work W --what teachers --seeds 1 2
    python bench/demo_seeds.py --demo demo_out --work W --summarise-only
    python bench/demo_seeds.py --demo demo_out --work W --what runs --seeds 0 1 2 --tag scratch \
        --set text_init=scratch --set optim.text_lr_scale=1 --set model.text.attention_dropout=null

World, cache and (for ``runs``) the retrieval targets are the demo's own (seed 0); results go to
``W/results.json`` one entry at a time, so a killed run continues where it stopped. One torch thread.
``--tag T --set KEY=VALUE ...`` runs a variant of the demo's runs (its keys start with ``T``; its seed 0 is run,
not read from the demo folder), e.g. the report tower trained from scratch as the demo did before session 8.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import scipy.stats
import torch

from ctxray.demo import PRESETS, RUNS, train_config
from ctxray.retrieval import RetrievalConfig, retrieve
from ctxray.teacher.train import preset as teacher_preset
from ctxray.teacher.train import train_teacher
from ctxray.train.loop import train


def _runs(demo: Path, work: Path, seeds: list[int], res: dict, save, tag: str = "", extra_all=()) -> None:
    settings = PRESETS["demo"]
    for seed in seeds:
        for name, extra in RUNS.items():
            key = f"{tag}{name}_seed{seed}"
            extra = [*extra, *extra_all]
            if key in res:
                continue
            cfg = train_config(settings, demo / "cache", demo / "retrieval", extra, seed)
            start = time.time()
            m = train(cfg, work / "runs" / key)
            res[key] = {k: m.get(k) for k in ("val_auroc", "collapsed_steps", "first_collapsed_step",
                                              "val_report_auroc", "train_loss")}
            res[key]["seconds"] = time.time() - start
            save()


def _teachers(demo: Path, work: Path, seeds: list[int], res: dict, save) -> None:
    settings = PRESETS["demo"]
    for seed in seeds:
        key = f"teacher{seed}"
        if key in res:
            continue
        start = time.time()
        tcfg = teacher_preset(settings.teacher, settings.teacher_text)
        tcfg.seed = seed
        tcfg.epochs = settings.teacher_epochs or tcfg.epochs
        tm = train_teacher(demo / "world" / "xray", work / key, tcfg)
        q = retrieve(RetrievalConfig(str(work / key), demo / "cache", demo / "world" / "xray",
                                     work / f"retrieval{seed}", seed=0))
        res[key] = {"expert_macro": tm["zero_shot_auc"]["macro"], "quality": q, "seconds": time.time() - start}
        save()


def summarise(demo: Path, res: dict, tag: str = "") -> str:
    """Markdown tables: the runs (untagged: seed 0 read from the demo folder) and the retrieval per expert seed."""
    lines = ["| seed | plain | full | full - plain | collapsed steps (plain / full) |", "|---:|---:|---:|---:|---|"]
    diffs = []
    mine = [k for k in res if "_seed" in k and k.split("_seed")[0] in {f"{tag}{n}" for n in RUNS}]
    seeds = sorted(({0} if not tag else set()) | {int(k.rsplit("_seed", 1)[1]) for k in mine})
    for seed in seeds:
        if seed == 0 and not tag:
            row = {n: json.loads((demo / "runs" / n / "metrics.json").read_text()) for n in RUNS}
        elif all(f"{tag}{n}_seed{seed}" in res for n in RUNS):
            row = {n: res[f"{tag}{n}_seed{seed}"] for n in RUNS}
        else:
            continue
        d = row["full"]["val_auroc"] - row["plain"]["val_auroc"]
        diffs.append(d)
        lines.append(f"| {seed} | {row['plain']['val_auroc']:.3f} | {row['full']['val_auroc']:.3f} | {d:+.3f} | "
                     f"{row['plain']['collapsed_steps']} / {row['full']['collapsed_steps']} |")
    if len(diffs) > 1:
        mean, se = statistics.mean(diffs), statistics.stdev(diffs) / len(diffs) ** 0.5
        t = float(scipy.stats.t.ppf(0.975, len(diffs) - 1))
        lines.append(f"\nmean full - plain {mean:+.3f}, 95% t-interval over seeds [{mean - t * se:+.3f}, "
                     f"{mean + t * se:+.3f}] ({len(diffs)} seeds)")
    lines += ["", "| expert seed | expert zero-shot macro | exact | Jaccard | most CTs on one X-ray "
              "| normal -> abnormal |",
              "|---:|---:|---:|---:|---:|---:|"]
    demo_q = json.loads((demo / "retrieval" / "quality.json").read_text())
    demo_t = json.loads((demo / "teacher" / "metrics.json").read_text())
    entries = [(0, demo_t["zero_shot_auc"]["macro"], demo_q)]
    entries += [(int(k[7:]), v["expert_macro"], v["quality"])
                for k, v in sorted(res.items()) if k.startswith("teacher")]
    for seed, macro, q in entries:
        a = q["agreement_top1"]["text"]
        lines.append(f"| {seed} | {macro:.3f} | {a['exact']:.3f} | {a['jaccard']:.3f} | "
                     f"{q['hubness']['max_ct_per_xray']} | {q.get('normal_to_abnormal', float('nan')):.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, required=True, help="a finished `ctxray demo` folder")
    ap.add_argument("--work", type=Path, required=True, help="where runs, experts and results.json go")
    ap.add_argument("--what", choices=["runs", "teachers"], default="runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--summarise-only", action="store_true")
    ap.add_argument("--tag", default="", help="prefix of this variant's result keys (with --set)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig override of both runs (repeatable); give the variant a --tag")
    args = ap.parse_args()
    from ctxray.utils.machine import describe_machine
    print(describe_machine(), flush=True)
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {}

    def save() -> None:
        path.write_text(json.dumps(res, indent=2, default=float))

    if not args.summarise_only:
        if args.what == "runs":
            _runs(args.demo, args.work, args.seeds, res, save, args.tag, args.overrides)
        else:
            _teachers(args.demo, args.work, args.seeds, res, save)
    print(summarise(args.demo, res, args.tag))


if __name__ == "__main__":
    main()
