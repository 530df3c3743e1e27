"""Which side is each finding on? Read from a localising classifier's left and right pools, against the world.

For every finding that a validation volume's ``ground_truth.jsonl`` record puts on a side (left, right or both),
the findings taken as known: the side set read from ``LocalisingClassifier.side_pools`` (every side whose pooled
probability is >= 0.5, else the likelier) beside the training reports' side rates alone (the baseline: both sides
where each is named in at least half of the reports that give the label a side, else the commoner). Works on any
``--head lse`` classifier of ``bench/train_supervised.py``: one trained with ``--side-weight`` (sides from the
reports) and, as the control, one trained on labels only.

    .venv/bin/python bench/side_readout.py --classifier SUP --cache C --world W [--split valid]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, help="a --head lse folder of bench/train_supervised.py")
    parser.add_argument("--cache", required=True, help="the volume cache (its train split gives the side rates)")
    parser.add_argument("--world", required=True, help="the synthetic world of the cache (ground_truth.jsonl)")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mirror-average", action="store_true",
                        help="average each volume's side probabilities with its mirror image's (sides swapped back)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    from ctxray.utils.machine import describe_machine

    print(describe_machine(), flush=True)
    torch.set_num_threads(args.threads)
    from safetensors.torch import load_file

    from ctxray.data.dataset import CTCacheDataset
    from ctxray.generate.checks import truth_sides
    from ctxray.inference.localising import mirrored_side_probs, prior_sides, report_side_targets, side_agreement
    from ctxray.inference.pointing import _stem, read_ground_truth
    from ctxray.inference.supervised import build_from_info

    info = json.loads((Path(args.classifier) / "classifier.json").read_text())
    if info.get("head") != "lse":
        raise SystemExit(f"{args.classifier}: a --head lse classifier is needed (it has {info.get('head')!r})")
    net = build_from_info(info)
    net.load_state_dict(load_file(str(Path(args.classifier) / "model.safetensors")))
    net.eval()
    names = info["labels"]
    train = CTCacheDataset(args.cache, split="train")
    prior = prior_sides(report_side_targets([str(e.get("report") or "") for e in train.entries], names), names)
    ds = CTCacheDataset(args.cache, split=args.split)
    rows = {_stem(r["VolumeName"]): r for r in read_ground_truth(args.world)[0]}
    t0, probs = time.perf_counter(), []
    with torch.no_grad():
        for i in range(len(ds)):
            volume = ds[i]["volume"][None]
            probs.append((mirrored_side_probs(net, volume) if args.mirror_average else
                          torch.sigmoid(net.side_pools(net.logit_map(volume))))[0].numpy())
    missing = [e["id"] for e in ds.entries if e["id"] not in rows]
    if missing:
        raise SystemExit(f"{args.world}: no ground-truth row for {len(missing)} volumes, e.g. {missing[0]}")
    truths = [truth_sides(rows[e["id"]]) for e in ds.entries]
    result = side_agreement(np.stack(probs), truths, names, prior)
    side_weight = info.get("side_weight", 0.0)
    print(f"{args.classifier} (side_weight {side_weight}, mirror {info.get('mirror', 0.0)}"
          f"{', mirror-averaged reading' if args.mirror_average else ''}), {args.split}: {len(ds)} volumes in "
          f"{time.perf_counter() - t0:.0f} s; {result['n']} sided findings")
    print(f"  exact side set {result['exact']:.3f}; the training reports' side rates alone "
          f"{result['prior_exact']:.3f}; findings on one side only ({result['one_side']['n']}): AUROC of right "
          f"minus left {result['one_side']['auroc']:.3f} (0.5: no side knowledge)")
    for label, v in result["per_label"].items():
        print(f"  {label:<38} {v['hits']:3d} / {v['n']:3d}   rates {v['prior_hits']:3d} / {v['n']:3d}"
              f"   (rates say {'+'.join(sorted(prior[label]))})")
    if args.out:
        Path(args.out).write_text(json.dumps({"classifier": args.classifier, "side_weight": side_weight,
                                              "mirror": info.get("mirror", 0.0),
                                              "mirror_average": args.mirror_average,
                                              "split": args.split, **result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
