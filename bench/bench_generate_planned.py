"""The planned generator against the template, the oracle and the shuffled-plan control (issue 17).

Encodes the cache's train and valid volumes once per CT model (cached under ``--work``), fits the planned
generator on the training split for each seed (probe folds and solver), writes the validation reports and
scores them: NLG (BLEU-4, METEOR, ROUGE-L, CIDEr), clinical efficacy per label (X-ray-visible vs CT-only
groups), laterality against ``ground_truth.jsonl``, and reports that state a finding and its negation.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/bench_generate_planned.py \
        --cache C --world W --run full=RUNS/full/checkpoints/last \
        --run plain=RUNS/plain/checkpoints/last --seeds 0 1 2 --work /tmp/planned --decoders full=G/full ...

The operating point (F-beta of the thresholds, share of volumes the normal gate passes as normal) is chosen
once per planner and CT model on the training split (out-of-fold, ``ctxray.generate.tune``) with the first
seed, then kept for every seed; with ``--calibration-cache C2`` (volumes the CT models never saw, e.g. a
world of another seed) it is chosen on C2 instead, and each seed's thresholds and gate are taken there.
Rows: each planner x CT model x seed;
``template`` (the most common training report), ``oracle`` (plan =
the reference's findings and sides), ``shuffled`` (another validation volume's plan, per seed), and
learnt decoders given as ``--decoders NAME=G`` (their ``samples.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch


def _encode(name: str, checkpoint: str, init: str, items, work: Path, swap: bool = False, hemithorax: bool = False):
    from ctxray.generate.data import load_cached_volume
    from ctxray.generate.planned import VolumeView, encode_volumes
    from ctxray.labels import load_labels
    from ctxray.models.zeroshot import logit_scale_of, prompt_embeddings
    from ctxray.train.checkpoint import load_model

    path = work / f"features_{name}.npz"
    if path.is_file():
        data = dict(np.load(path))
    else:
        model, tokenizer, _ = load_model(checkpoint)
        model.eval()
        if init == "random":
            torch.manual_seed(0)
            for m in model.volume_encoder.modules():
                if hasattr(m, "reset_parameters") and m is not model.volume_encoder:
                    m.reset_parameters()
            model.volume_proj.reset_parameters()
        view = VolumeView(model.volume_encoder, model.volume_proj, swap=swap, hemithorax=hemithorax)
        data = {}
        for split, rows in items.items():
            loaders = [lambda p=i.path: load_cached_volume(p) for i in rows]
            for k, v in encode_volumes(view, loaders).items():
                data[f"{split}.{k}"] = v
            if split == "train":
                for k, v in encode_volumes(view, loaders, flip=True).items():
                    data[f"flip.{k}"] = v
        pos, neg = prompt_embeddings(model, tokenizer, load_labels())
        data.update({"pos": pos.numpy(), "neg": neg.numpy(), "scale": np.array([logit_scale_of(model)])})
        np.savez(path, **data)
    splits = {k.split(".", 1)[0] for k in data if "." in k}  # "pos", "neg", "scale" have none
    feats = {s: {k.split(".", 1)[1]: v for k, v in data.items() if k.startswith(s + ".")} for s in splits}
    prompts = (data["pos"].astype(np.float64), data["neg"].astype(np.float64), float(data["scale"][0]))
    return feats, prompts


def main() -> None:
    from dataclasses import replace

    from ctxray.data.text import report_text
    from ctxray.generate.checks import score_generated
    from ctxray.generate.data import most_common_report, read_items
    from ctxray.generate.plan import plans_from_reports, shuffled_plans
    from ctxray.generate.planned import PlannedConfig, fit_planned
    from ctxray.generate.run_planned import calibration_items, calibration_set, patient_of
    from ctxray.generate.tune import calibrate, choose_operating_point

    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", required=True)
    ap.add_argument("--world", required=True, help="the synthetic world (ct-rate/ground_truth.jsonl)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME=CHECKPOINT")
    ap.add_argument("--random-from", default=None, help="a checkpoint whose architecture gives a random encoder")
    ap.add_argument("--planners", nargs="+", default=["probe", "zeroshot"])
    ap.add_argument("--probe-features", default="embedding")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--wording", default="frequent", choices=["frequent", "neighbours"])
    ap.add_argument("--side-features", default="thirds", choices=["thirds", "swap", "hemithorax"],
                    help="PlannedConfig.side_features (swap: two more encoder passes per volume; swap and hemithorax: "
                         "use a fresh --work, or the features kept there lack them)")
    ap.add_argument("--betas", nargs="+", type=float, default=[0.75, 0.5, 0.35])
    ap.add_argument("--shares", nargs="+", type=float, default=[0.45, 0.6, 0.75])
    ap.add_argument("--no-tune", action="store_true", help="use the first --betas and --shares as they are")
    ap.add_argument("--decoders", nargs="*", default=[], metavar="NAME=G")
    ap.add_argument("--work", required=True)
    ap.add_argument("--calibration-cache", default=None,
                    help="volumes the CT models never saw: thresholds, gate, operating point chosen there (all splits)")
    ap.add_argument("--java", choices=["auto", "on", "off"], default="auto")
    args = ap.parse_args()
    from ctxray.utils.machine import describe_machine
    print(describe_machine(), flush=True)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train = read_items(args.cache, "train")
    valid = read_items(args.cache, "valid")
    gt_path = Path(args.world) / "ct-rate" / "ground_truth.jsonl"
    gt = {json.loads(line)["VolumeName"].removesuffix(".nii.gz"): json.loads(line)
          for line in gt_path.read_text().splitlines() if line.strip()}
    refs = [i.report for i in valid]
    truth = [gt[i.id] for i in valid]
    base = most_common_report(train)
    skeleton = (base.findings, base.impression)
    use_java = {"auto": None, "on": True, "off": False}[args.java]
    rows: list[dict] = []

    def score(name: str, seed, texts, plans=None):
        res = score_generated(texts, refs, truth, use_java=use_java)
        res.update({"generator": name, "seed": seed})
        rows.append(res)
        print(f"{name:<28} seed {seed}: CE macro F1 {res['ce_macro_f1']:.3f} (xray {res['ce_xray_f1']:.3f}, "
              f"ct-only {res['ce_ctonly_f1']:.3f}) BLEU-4 {res['BLEU-4']:.3f} ROUGE-L {res['ROUGE-L']:.3f} "
              f"CIDEr {res['CIDEr']:.3f} contradictions {res['contradictions']} "
              f"laterality {res['laterality_acc']:.3f} ({res['laterality_n']})  [{time.time() - t0:.0f}s]", flush=True)
        return res

    score("template", None, [base.report] * len(refs))
    sections = ([i.findings for i in train], [i.impression for i in train])
    runs = [r.split("=", 1) + ["checkpoint"] for r in args.run]
    if args.random_from:
        runs.append(["random", args.random_from, "random"])
    samples: dict[str, list] = {}
    oracle_done = False
    for name, ckpt, init in runs:
        swap, hemi = args.side_features == "swap", args.side_features == "hemithorax"
        feats, prompts = _encode(name, ckpt, init, {"train": train, "valid": valid}, work, swap, hemi)
        groups = [patient_of(i.id) for i in train]
        calibration = None
        if args.calibration_cache:
            cal = calibration_items(args.calibration_cache, None, args.cache, "train")
            cal_feats, _ = _encode(f"{name}_calibration", ckpt, init, {"calibration": cal}, work, swap, hemi)
            calibration = calibration_set(cal, cal_feats["calibration"])
        for planner in args.planners:
            base_cfg = PlannedConfig(planner=planner, probe_features=args.probe_features, wording=args.wording,
                                     side_features=args.side_features, seed=args.seeds[0])
            if args.no_tune:  # a fixed operating point: the first beta and share given
                chosen = replace(base_cfg, beta=args.betas[0], normal_share=args.shares[0])
            else:
                chosen, tuning = choose_operating_point(feats["train"], feats["flip"], *sections, skeleton, base_cfg,
                                                        groups, prompts, betas=args.betas, shares=args.shares,
                                                        calibration=calibration)
                (work / f"tuning_{planner}_{name}.json").write_text(json.dumps(tuning, indent=1))
            where = "the training split" if calibration is None else f"calibration ({len(calibration.findings)})"
            print(f"{planner} ({name}): chosen on {where}: beta {chosen.beta}, normal share "
                  f"{chosen.normal_share} [{time.time() - t0:.0f}s]", flush=True)
            for seed in args.seeds:
                cfg = replace(chosen, seed=seed)
                gen = fit_planned(feats["train"], feats["flip"], *sections, skeleton, cfg, prompts, groups)
                if calibration is not None:
                    calibrate(gen, calibration, cfg.beta, cfg.normal_share)
                plans = gen.plan(feats["valid"])
                nb = gen.neighbours(feats["valid"])
                texts = [report_text(f, i) for f, i in gen.write(plans, nb)]
                score(f"planned-{planner} ({name})", seed, texts)
                sides = gen.side_agreement(feats["valid"], truth)
                rows[-1]["side_probe"] = sides
                per = ", ".join(f"{k} {v['hits']}/{v['n']}" for k, v in sides["per_label"].items())
                print(f"  side probe ({cfg.side_features}) on every true sided finding: exact {sides['exact']:.3f} "
                      f"({sides['n']}; the training side rates alone {sides['prior_exact']:.3f}): {per}", flush=True)
                samples[f"planned-{planner}-{name}-s{seed}"] = texts
                samples[f"plans-{planner}-{name}-s{seed}"] = [p.to_dict() for p in plans]
                if not oracle_done:
                    oracle = plans_from_reports(refs)
                    score("oracle plan", None, [report_text(f, i) for f, i in gen.write(oracle, nb)])
                    oracle_done = True
                if planner == args.planners[0] and name == runs[0][0]:
                    shuf = shuffled_plans(plans, seed)
                    score(f"shuffled plan ({name})", seed, [report_text(f, i) for f, i in gen.write(shuf, nb)])
    for item in args.decoders:
        name, folder = item.split("=", 1)
        got = {json.loads(line)["id"]: json.loads(line)["generated"]
               for line in (Path(folder) / "samples.jsonl").read_text().splitlines()}
        score(f"decoder ({name})", None, [got[i.id] for i in valid])
    (work / "rows.json").write_text(json.dumps(rows, indent=1))
    (work / "samples.json").write_text(json.dumps({"ids": [i.id for i in valid], "references": refs, **samples}))
    print(f"done in {time.time() - t0:.0f}s; rows in {work / 'rows.json'}")


if __name__ == "__main__":
    main()
