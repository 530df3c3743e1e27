"""What the Astra chest-CT weights buy on the synthetic world: frozen-feature linear probes vs scratch training.

Arms, all on one cache (``--cache``, e.g. the tiny world preprocessed at 48 x 96 x 96 with the Astra window):

- ``astra probe``: frozen ``i3resnet_152`` with ``model.pretrained=astra``, global-average-pooled features, a
  logistic-regression probe (``ctxray.evaluate.finetune.train_probe``);
- ``random probe``: the same architecture with random weights, same probe (is it the weights or the network?);
- ``scratch``: ``resnet3d_small`` trained end to end with a linear head from random initialisation.

Each with few labels (``--few`` training volumes, ``--seeds`` subsets) and all training labels. Prints macro
AUROC on the valid split (labels with both classes present) and wall time; ``--json`` writes the table. Features
are cached in ``--work`` so a rerun only refits probes.

    .venv/bin/python bench/astra_probe.py --cache CACHE --work DIR [--few 20] [--seeds 3] [--epochs 12]
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


def macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    scores = [roc_auc_score(y[:, j], p[:, j]) for j in range(y.shape[1])
              if len(np.unique(y[~np.isnan(y[:, j]), j])) == 2]
    return float(np.mean(scores))


def features(name: str, work: Path, train_ds, valid_ds, pretrained: bool) -> dict:
    from ctxray.evaluate.finetune import extract_features
    from ctxray.models.i3resnet import load_pretrained
    from ctxray.models.registry import create_volume_encoder

    path = work / f"features_{name}.npz"
    if path.is_file():
        return dict(np.load(path))
    torch.manual_seed(0)
    enc = create_volume_encoder("i3resnet_152", input_shape=tuple(train_ds[0]["volume"].shape[-3:]))
    if pretrained:
        load_pretrained(enc, "astra")
    t0 = time.perf_counter()
    xt, yt, _ = extract_features(enc, train_ds, batch_size=4)
    xv, yv, _ = extract_features(enc, valid_ds, batch_size=4)
    out = {"xt": xt.numpy(), "yt": yt, "xv": xv.numpy(), "yv": yv,
           "seconds": np.array(time.perf_counter() - t0), "n": np.array(len(train_ds) + len(valid_ds))}
    np.savez(path, **out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--work", required=True, help="folder for cached features and the table")
    parser.add_argument("--few", type=int, default=20, help="training volumes of the few-label arm")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12, help="scratch training epochs")
    parser.add_argument("--arms", nargs="+", default=["astra", "random", "scratch"],
                        choices=["astra", "random", "scratch"], help="which arms to run (default all)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from ctxray.utils.machine import describe_machine
    print(describe_machine(), flush=True)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from torch.utils.data import Subset

    from ctxray.data.dataset import CTCacheDataset
    from ctxray.evaluate.finetune import FinetuneSettings, _predict, train_full, train_probe
    from ctxray.models.registry import create_volume_encoder

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_ds, valid_ds = CTCacheDataset(args.cache, split="train"), CTCacheDataset(args.cache, split="valid")
    n = len(train_ds)
    subsets = {f"few ({args.few})": [np.sort(np.random.default_rng(s).permutation(n)[:args.few])
                                     for s in range(args.seeds)], f"all ({n})": [np.arange(n)]}
    rows = []
    for arm, pretrained in (("astra probe", True), ("random probe", False)):
        if arm.split()[0] not in args.arms:
            continue
        f = features(arm.split()[0], work, train_ds, valid_ds, pretrained)
        per_volume = float(f["seconds"]) / int(f["n"])
        for label, sets in subsets.items():
            t0 = time.perf_counter()
            aucs = []
            for s, idx in enumerate(sets):
                predict = train_probe(torch.from_numpy(f["xt"][idx]), f["yt"][idx], FinetuneSettings(), seed=s)
                aucs.append(macro_auroc(f["yv"], predict(torch.from_numpy(f["xv"]))))
            rows.append({"arm": arm, "labels": label, "auroc": float(np.mean(aucs)), "sd": float(np.std(aucs)),
                         "runs": len(aucs), "fit_s": time.perf_counter() - t0, "feature_s_per_volume": per_volume})
            logging.info("%s", rows[-1])
    if "scratch" in args.arms:
        settings = FinetuneSettings(epochs=args.epochs, lr=2e-3, encoder_lr_mult=1.0, weight_decay=1e-4,
                                    batch_size=8)
        yv = valid_ds.labels_matrix()
        for label, sets in subsets.items():
            aucs, t0 = [], time.perf_counter()
            for s, idx in enumerate(sets):
                torch.manual_seed(s)
                enc = create_volume_encoder("resnet3d_small", input_shape=tuple(train_ds[0]["volume"].shape[-3:]))
                model = train_full(enc, Subset(train_ds, idx.tolist()), 18, settings, seed=s)
                aucs.append(macro_auroc(yv, _predict(model, valid_ds, 8)))
            rows.append({"arm": "scratch resnet3d_small", "labels": label, "auroc": float(np.mean(aucs)),
                         "sd": float(np.std(aucs)), "runs": len(aucs), "fit_s": time.perf_counter() - t0})
            logging.info("%s", rows[-1])
    print(f"{'arm':<24} {'labels':<10} {'macro AUROC':>12} {'runs':>5} {'fit s':>8}")
    for r in rows:
        print(f"{r['arm']:<24} {r['labels']:<10} {r['auroc']:>8.3f}±{r['sd']:.3f} {r['runs']:>5} {r['fit_s']:>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
