"""The pointing game on the synthetic world: do relevance maps peak on the lesions?

For every volume of a split of the synthetic world (``ctxray synth --out W``), the exported model
(``ctxray export --out MODEL_DIR``) decides each label; for each true positive (ground truth 1 and
decision positive) with a localised lesion of that label in ``W/ct-rate/ground_truth.jsonl``, the
label's Grad-CAM map (``CTModel.explain``) is computed on the scan's grid and its maximum is a hit
when it lies within the lesion's radius plus ``--margin`` mm of a lesion centre. The random-point
baseline applies the same rule to uniformly drawn voxels. A second table (``--also-all-positives``)
judges the maps of every ground-truth positive, whatever the model decided.

    .venv/bin/python bench/pointing_game.py --model MODEL_DIR --world W [--split valid] [--margin 10]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import torch

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder (ctxray export)")
    parser.add_argument("--world", required=True, help="synthetic world folder (ctxray synth)")
    parser.add_argument("--split", default="valid", help="ground-truth split to use (train / valid)")
    parser.add_argument("--margin", type=float, default=10.0, help="mm added to the lesion radius")
    parser.add_argument("--max-volumes", type=int, default=None, help="use only the first N volumes")
    parser.add_argument("--also-all-positives", action="store_true",
                        help="also score the maps of every ground-truth positive (not only true positives)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from ctxray.utils.machine import describe_machine

    print(describe_machine())

    import ctxray
    from ctxray.inference.pointing import collect_cases, format_table, pointing_game, read_ground_truth

    model = ctxray.load(args.model)
    rows, paths = read_ground_truth(args.world, args.split)
    rows = rows[: args.max_volumes] if args.max_volumes else rows
    modes = [True, False] if args.also_all_positives else [True]
    for require in modes:
        t0 = time.perf_counter()
        cases, counts = collect_cases(model, rows, paths, require_decision=require)
        results = pointing_game(cases, margin_mm=args.margin)
        what = "true positives" if require else "all ground-truth positives (model decision ignored)"
        print(f"\nPointing game on {len(rows)} {args.split} volumes, {what}; margin {args.margin:g} mm + lesion "
              f"radius; {time.perf_counter() - t0:.0f} s")
        print(format_table({k: results[k] for k in model.labels if k in results}, args.margin))
        unloc = {k: c for k, c in counts.items() if c["tp"] > c["tp_localised"]}
        if unloc:
            print("labels with positives that have no localised lesion in the ground truth: "
                  + ", ".join(f"{k} ({c['tp'] - c['tp_localised']})" for k, c in unloc.items()))
        print("counts (gt positives / counted / localised): "
              + "; ".join(f"{k}: {c['gt_pos']}/{c['tp']}/{c['tp_localised']}" for k, c in counts.items()))


if __name__ == "__main__":
    main()
