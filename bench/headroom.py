"""Headroom of the CT side: the supervised ceiling per label at N training volumes, and frozen-feature probes.

Same encoder, same input as BIUD training, labels instead of reports, a fixed number of optimiser steps
whatever N (``ctxray.evaluate.headroom``). Prints a per-label table (rows: labels; columns: N), the macro
AUROC over all / X-ray-visible / CT-only labels, the goal beside it (all data >= 0.85 macro, every label
> 0.70), and the machine. ``--probe RUN`` adds a frozen-feature probe of a trained run's volume encoder at
``--probe-budget`` labels, with a random-init encoder of the same architecture as its floor.

    .venv/bin/python bench/headroom.py --cache CACHE --out OUT.json [--n 100 400 0] [--seeds 0]
        [--steps 600] [--encoder resnet3d_small] [--probe RUN ...] [--probe-budget 100] [--threads 1]

``--n 0`` means all training volumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")

GOAL_MACRO, GOAL_LABEL = 0.85, 0.70


def table(result: dict) -> str:
    """Per-label mean AUROC over seeds, one column per N."""
    from ctxray.labels import load_labels

    visible = set(load_labels().xray_visible_names)
    ns = sorted({r["n"] for r in result["runs"]})

    def mean(n: int, key: str, label: bool = False) -> str:
        vals = [(r["auroc"][key] if label else r[key]) for r in result["runs"] if r["n"] == n]
        vals = [v for v in vals if v is not None]
        if not vals:
            return "n/a"
        sd = f" ±{np.std(vals, ddof=1):.3f}" if len(vals) > 1 else ""
        return f"{np.mean(vals):.3f}{sd}"

    head = "| label | X-ray | positives (valid) | " + " | ".join(f"N={n}" for n in ns) + " |"
    lines = [head, "|" + "---|" * (3 + len(ns))]
    for name in result["labels"]:
        lines.append(f"| {name} | {'yes' if name in visible else 'CT only'} | {result['valid_positives'][name]} | "
                     + " | ".join(mean(n, name, label=True) for n in ns) + " |")
    for key in ("macro", "xray_visible", "ct_only"):
        lines.append(f"| **{key}** | | | " + " | ".join(mean(n, key) for n in ns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="volume cache with labels (train and valid splits)")
    parser.add_argument("--out", required=True, help="JSON with every run")
    parser.add_argument("--n", type=int, nargs="+", default=[100, 400, 0], help="training volumes; 0 = all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--encoder", default="resnet3d_small")
    parser.add_argument("--encoder-kwargs", default="{}",
                        help="JSON options of the encoder, e.g. '{\"norm\": \"batch\"}'")
    parser.add_argument("--probe", nargs="*", default=[], help="trained runs whose frozen encoders are probed")
    parser.add_argument("--probe-budget", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from ctxray.evaluate.headroom import CeilingSettings, probe_readout, supervised_ceiling
    from ctxray.utils.machine import describe_machine

    t0 = time.perf_counter()
    settings = CeilingSettings(encoder=args.encoder, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               encoder_kwargs=json.loads(args.encoder_kwargs))
    result = supervised_ceiling(args.cache, [n or None for n in args.n], args.seeds, settings)
    probes = {}
    for run in args.probe:
        from ctxray.models.registry import create_volume_encoder
        from ctxray.train.checkpoint import load_model

        model, _, config = load_model(run)
        enc = model.volume_encoder
        torch.manual_seed(0)
        kwargs = dict(config.model.encoder_kwargs, input_shape=tuple(enc.input_shape))
        probes[run] = probe_readout(enc, args.cache, args.probe_budget)
        probes[f"{run} (random init)"] = probe_readout(create_volume_encoder(config.model.encoder, **kwargs),
                                                       args.cache, args.probe_budget)
    result.update({"probes": probes, "machine": describe_machine(),
                   "total_seconds": round(time.perf_counter() - t0, 1),
                   "goal": {"macro_all_data": GOAL_MACRO, "every_label_all_data": GOAL_LABEL}})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(describe_machine())
    print(f"supervised ceiling: {args.encoder}, {args.steps} steps of batch {args.batch_size}, "
          f"{result['n_valid']} validation volumes, seeds {args.seeds}")
    print(table(result))
    n_all = max(r["n"] for r in result["runs"])
    top = [r for r in result["runs"] if r["n"] == n_all]
    macro = float(np.mean([r["macro"] for r in top]))
    worst = min((np.mean([r["auroc"][k] for r in top]), k) for k in result["labels"]
                if all(r["auroc"][k] is not None for r in top))
    print(f"goal (N={n_all}): macro {macro:.3f} vs >= {GOAL_MACRO} [{'met' if macro >= GOAL_MACRO else 'MISSED'}]; "
          f"worst label {worst[1]} {worst[0]:.3f} vs > {GOAL_LABEL} "
          f"[{'met' if worst[0] > GOAL_LABEL else 'MISSED'}]")
    for name, p in probes.items():
        print(f"probe {name}: N={p['n']} macro {p['macro']:.3f} (X-ray-visible {p['xray_visible']:.3f}, "
              f"CT-only {p['ct_only']:.3f})")
    print(f"total {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
