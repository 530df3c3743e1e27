"""The pointing game on the synthetic world: do relevance maps point at the lesions?

For every volume of a split of the synthetic world (``ctxray synth --out W``), the model decides each label;
for each true positive (ground truth 1 and decision positive) with a localised lesion of that label in
``W/ct-rate/ground_truth.jsonl``, each explanation method's map is computed, mapped onto the scan's grid, and
its point (centroid of the top 0.5 % of the body's voxels, ``ctxray.inference.pointing.map_point``) is a hit
when it lies within the lesion's radius plus ``--margin`` mm of a lesion centre. Printed per method and label:
hits, pointing accuracy, the best possible hit rate of the method's grid (a hot cell at the best cell
centre), the energy inside the dilated lesion spheres, and two chance levels (a random voxel of the volume,
of the body; also the energy of a uniform map). Then a method x label matrix.

The model is an exported CT-report model (``--model``, ``ctxray export``; zero-shot decisions and
prompt-direction scores), a supervised classifier (``--classifier``, ``bench/train_supervised.py``;
decisions at its validation Youden thresholds, label logits explained), or both: then the supervised
reference and the BIUD model are measured on the same volumes and printed side by side (each on its own
true positives), with a "focal findings" row (the issue's goal: >= 0.6 on nodule, lung opacity,
consolidation, pleural and pericardial effusion, hiatal hernia). A method ``gradcam:2`` is Grad-CAM
on stage 2 (see ``ctxray.inference.heatmap``), ``occlusion:4x8x8`` occlusion with that patch (stride half),
``occlusion:blur`` occlusion whose patch is filled with a smoothed copy of the volume instead of air.
``--json`` writes the results (``ctxray export --localisation`` reads it to mark validated labels).

    .venv/bin/python bench/pointing_game.py [--model MODEL_DIR] [--classifier DIR --spec small] --world W \
        [--split valid] [--margin 10] [--methods gradcam hirescam occlusion] [--model-methods ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")


def _load_subjects(args) -> list[tuple[str, str, object]]:
    """(short name, description, model) for --classifier and --model, the supervised reference first."""
    subjects = []
    if args.classifier:
        from ctxray.data.spec import get_preset
        from ctxray.inference.supervised import load_classifier

        info = json.loads((Path(args.classifier) / "classifier.json").read_text())
        subjects.append(("supervised", f"supervised classifier {args.classifier} ({info.get('head', 'linear')} head; "
                         f"thresholds: {info.get('threshold_source', 'probability 0.5')})",
                         load_classifier(args.classifier, get_preset(args.spec))))
    if args.model:
        import ctxray

        subjects.append(("BIUD", f"CT-report model {args.model} (zero-shot decisions)", ctxray.load(args.model)))
    return subjects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (ctxray export)")
    parser.add_argument("--classifier", help="classifier folder (bench/train_supervised.py)")
    parser.add_argument("--spec", default="small", help="preprocessing preset of --classifier")
    parser.add_argument("--world", required=True, help="synthetic world folder (ctxray synth)")
    parser.add_argument("--split", default="valid", help="ground-truth split to use (train / valid / all)")
    parser.add_argument("--margin", type=float, default=10.0, help="mm added to the lesion radius")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "hirescam", "occlusion"],
                        help="methods, optionally with a CAM stage: gradcam:2")
    parser.add_argument("--model-methods", nargs="+", default=None,
                        help="methods for --model when both models are given (default: --methods)")
    parser.add_argument("--max-volumes", type=int, default=None, help="use only the first N volumes")
    parser.add_argument("--also-all-positives", action="store_true",
                        help="also score the maps of every ground-truth positive (not only true positives)")
    parser.add_argument("--json", default=None, help="write the per-method, per-label results here (of --model "
                        "when given, with the classifier's under 'reference')")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (args.model or args.classifier):
        parser.error("give --model, --classifier or both")
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from ctxray.utils.machine import describe_machine

    print(describe_machine())

    from ctxray.inference.pointing import (
        collect_cases,
        format_comparison,
        format_matrix,
        format_table,
        pointing_game,
        read_ground_truth,
    )

    rows, paths = read_ground_truth(args.world, None if args.split == "all" else args.split)
    rows = rows[: args.max_volumes] if args.max_volumes else rows
    modes = [True, False] if args.also_all_positives else [True]
    records: dict[str, dict] = {}
    compared: dict[str, dict] = {}
    for short, what_model, model in _load_subjects(args):
        methods = args.model_methods if short == "BIUD" and args.model_methods and args.classifier else args.methods
        out: dict = {"model": args.model if short == "BIUD" else args.classifier, "world": args.world,
                     "split": args.split, "margin_mm": args.margin, "n_volumes": len(rows), "methods": {},
                     "seconds": {}}
        for require in modes:
            by_method = {}
            what = "true positives" if require else "all ground-truth positives (model decision ignored)"
            for spec in methods:  # a method spec of ctxray.inference.heatmap.method_spec, e.g. occlusion:blur
                t0 = time.perf_counter()
                cases, counts = collect_cases(model, rows, paths, require_decision=require, method=spec,
                                              margin_mm=args.margin)
                results = pointing_game(cases, margin_mm=args.margin)
                by_method[spec] = {k: results[k] for k in model.labels if k in results}
                seconds = time.perf_counter() - t0
                print(f"\n{spec} on {len(rows)} {args.split} volumes of {args.world}, {what}; {what_model}; "
                      f"{seconds:.0f} s")
                print(format_table(by_method[spec], args.margin))
                if require:
                    out["seconds"][spec] = round(seconds, 1)
                    out["methods"][spec] = {k: {"n": r.n, "hits": r.hits, "rate": r.rate,
                                                "best_possible": r.best_possible, "energy": r.energy,
                                                "random_volume": r.baseline, "random_body": r.body_baseline}
                                            for k, r in by_method[spec].items()}
            print(f"\nPointing accuracy ({what}; {short}), method (best possible on its grid) x label:")
            print(format_matrix(by_method, model.labels))
            print("counts (gt positives / counted / localised): "
                  + "; ".join(f"{k}: {c['gt_pos']}/{c['tp']}/{c['tp_localised']}" for k, c in counts.items()))
            if require:
                compared[short] = by_method
        records[short] = out
    if len(compared) > 1:
        labels = _load_labels()
        print(f"\nPointing accuracy on true positives, supervised reference beside the BIUD model (margin "
              f"{args.margin:g} mm; best possible on the method's grid in brackets):")
        print(format_comparison(compared, labels))
    if args.json:
        out = records.get("BIUD", records.get("supervised"))
        if "BIUD" in records and "supervised" in records:
            out = {**out, "reference": records["supervised"]}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)


def _load_labels() -> list[str]:
    from ctxray.labels import load_labels

    return load_labels().names


if __name__ == "__main__":
    main()
