"""Train the supervised reference classifier that explanation methods are validated on.

A volume encoder plus a linear head trained with binary cross-entropy on the synthetic world's labels
(``ctxray.evaluate.finetune.train_full``, from random initialisation, encoder learning rate = head
learning rate). It is the model that "certainly sees the lesions" of issue 14: its per-label
validation AUROC is printed, and ``bench/pointing_game.py --classifier OUT`` runs the explanation
methods on it. Writes ``OUT/model.safetensors`` and ``OUT/classifier.json`` (encoder, input shape,
labels, validation AUROC per label).

``--head lse`` trains the model that is localisable by design instead
(``ctxray.inference.localising.LocalisingClassifier``: the ResNet stopped at a fine stage, one logit per
label and location, log-sum-exp pooling; ``--stem-stride``, ``--widths``, ``--layers``, ``--sharpness``;
with ``--patch`` a ``PatchEncoder`` whose cells see only themselves and a few voxels around),
with AdamW and a one-cycle schedule.

``--side-weight W`` (lse only) also trains the log-sum-exp pools of the grid's left and right halves on the sides
each training report names (``ctxray.inference.localising.report_side_targets``: multiple-instance learning with
each half a bag): supervision a real dataset's reports give, unlike ``--cell-weight``. ``bench/side_readout.py``
reads the sides back on validation volumes against the world's ground truth.

``--mirror P`` (lse only) shows each training volume mirrored left to right with probability P, its report sides
swapped (``ctxray.inference.localising.mirror_batch``).

``--cell-weight W --worlds W0 W1 ...`` (lse only; one world per cache, in the order ``--cache``,
``--extra-train``) also trains the per-location logits on where the world puts each label's lesions
(``ctxray.inference.pointing.cell_targets``, loss ``ctxray.losses.balanced_cell_bce``): a reference whose score
certainly comes from the lesion, so a method whose map misses there is wrong, not the model. It uses the
synthetic world's lesion positions, which a real dataset does not give: a reference for validating explanation
methods, not a recipe.

    .venv/bin/python bench/train_supervised.py --cache CACHE --out OUT [--extra-train CACHE1 CACHE2 ...]
        [--encoder resnet3d_small] [--epochs 12] [--head lse --norm batch]
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


class _Targets(torch.utils.data.Dataset):
    """A dataset whose items also carry ``key``: extra per-volume targets by volume id (``cells``: per-label lesion
    targets on the net's logit grid; ``sides``: per-label left/right targets read from the report)."""

    def __init__(self, base, key: str, table: dict[str, np.ndarray]) -> None:
        self.base, self.key, self.table = base, key, table

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        item = self.base[index]
        return {**item, self.key: torch.from_numpy(self.table[item["id"]])}


def _with_sides(train_ds, labels):
    """The training set with ``sides`` targets from its reports (``report_side_targets``), and what they hold."""
    from ctxray.inference.localising import report_side_targets

    parts = getattr(train_ds, "datasets", [train_ds])  # a ConcatDataset of cache datasets (or of _Targets)
    entries = [e for part in parts for e in getattr(part, "base", part).entries]
    ids, reports = [str(e["id"]) for e in entries], [str(e.get("report") or "") for e in entries]
    targets = report_side_targets(reports, labels)
    print(side_summary(targets, labels), flush=True)
    return _Targets(train_ds, "sides", dict(zip(ids, targets)))


def side_summary(targets: np.ndarray, labels) -> str:
    """Per label whose reports name a side: training volumes with the finding on the left only, right only, both,
    and stated without a side (unknown on both: not trained)."""
    lines = ["side targets from the training reports: left only / right only / both / no side named:"]
    for j, label in enumerate(labels):
        t = targets[:, j]
        known = ~np.isnan(t).any(axis=1)
        left, right = (t[:, 0] == 1) & known, (t[:, 1] == 1) & known
        counts = [int((left & ~right).sum()), int((right & ~left).sum()), int((left & right).sum()),
                  int((~known).sum())]
        if sum(counts[:3]):
            lines.append(f"  {label:<38} {counts[0]:4d} / {counts[1]:4d} / {counts[2]:4d} / {counts[3]:4d}")
    return "\n".join(lines)


def _with_cells(parts, caches, worlds, net, margin_mm: float, labels):
    """The training parts with their cell targets (each cache's world's ground truth on the net's grid)."""
    from torch.utils.data import ConcatDataset

    from ctxray.inference.pointing import FOCAL, _stem, cell_targets, read_ground_truth
    from ctxray.labels import CT_RATE_LABELS

    if len(worlds) != len(caches):
        raise SystemExit(f"--cell-weight needs one --worlds entry per cache ({len(caches)}); got {len(worlds)}")
    rows = {cache: {_stem(r["VolumeName"]): r for r in read_ground_truth(world)[0]}
            for cache, world in zip(caches, worlds)}
    out, t0 = [], time.perf_counter()
    for part in parts:
        key = next(c for c in caches if Path(c).resolve() == Path(part.cache_dir).resolve())
        spec = part.spec
        grid = net.stage_grid(spec.shape_zyx, net.explain_stage)
        cells = {}
        for entry in part.entries:
            row = rows[key].get(entry["id"])
            if row is None:
                raise SystemExit(f"{key}: volume {entry['id']} has no ground-truth row in its world")
            cells[entry["id"]] = cell_targets(row, CT_RATE_LABELS, spec, grid, entry["orig_shape"],
                                              entry["orig_spacing"], margin_mm, labels or FOCAL)
        out.append(_Targets(part, "cells", cells))
    n = sum(len(p) for p in out)
    print(f"cell targets for {n} volumes on a {'x'.join(map(str, grid))} grid in {time.perf_counter() - t0:.0f} s",
          flush=True)
    print(cell_summary([t for p in out for t in p.table.values()], CT_RATE_LABELS, labels or FOCAL), flush=True)
    return ConcatDataset(out)


def cell_summary(targets: list[np.ndarray], labels, cell_labels) -> str:
    """Per label with cell targets: volumes whose lesions mark cells, the mean marked cells among them, and the
    volumes left unknown (the label present but the world places no lesion: their cells are NaN, not trained)."""
    lines = ["cell targets per label: volumes with lesion cells (mean cells each), present but unplaced (NaN):"]
    for j, label in enumerate(labels):
        if label not in cell_labels:
            continue
        placed = [t[j] for t in targets if not np.isnan(t[j]).all()]
        unknown = len(targets) - len(placed)
        marked = [int(c.sum()) for c in placed if c.sum() > 0]
        mean = f"{np.mean(marked):.1f}" if marked else "-"
        lines.append(f"  {label:<38} {len(marked):5d} ({mean} cells)   unplaced {unknown}")
    return "\n".join(lines)


def _external(spec: str, shape: tuple[int, ...]) -> torch.nn.Module:
    """The encoder of ``--external module:function`` (``bench_train.build_external``), checked for a pooled output."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import build_external

    enc = build_external(spec, tuple(shape))
    out_dim = getattr(enc, "out_dim", None)
    with torch.no_grad():
        got = enc(torch.zeros(1, 1, *shape))
    if not isinstance(out_dim, int) or tuple(got.shape) != (1, out_dim):
        raise SystemExit(f"--external {spec}: needs an int out_dim and forward -> (B, out_dim); got out_dim "
                         f"{out_dim!r} and an output of shape {tuple(got.shape)}")
    return enc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="volume cache with labels (ctxray preprocess): its train "
                        "split trains, its valid split is the validation")
    parser.add_argument("--extra-train", nargs="*", default=[],
                        help="more caches (other world seeds) whose train and valid splits all train")
    parser.add_argument("--out", required=True)
    parser.add_argument("--encoder", default="resnet3d_small")
    parser.add_argument("--encoder-kwargs", default=None,
                        help='linear head: JSON keyword arguments of the encoder, e.g. \'{"stem": "conv"}\'')
    parser.add_argument("--external", default=None,
                        help="linear head: module:function building the encoder for a (D, H, W) shape instead of "
                             "--encoder (e.g. a reference encoder set up outside the project); the module it "
                             "returns needs out_dim and forward (B, 1, D, H, W) -> (B, out_dim)")
    parser.add_argument("--norm", choices=("group", "batch", "instance"), default=None,
                        help="ResNet normalisation (default: the encoder's, GroupNorm)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head", choices=("linear", "lse"), default="linear",
                        help="linear: global average pool + linear head (--encoder); lse: per-location logits "
                        "pooled by log-sum-exp (LocalisingClassifier)")
    parser.add_argument("--stem-stride", default="1,2,2", help="lse: stem stride per axis")
    parser.add_argument("--layers", default="2", help="lse: blocks per ResNet stage kept, comma-separated")
    parser.add_argument("--widths", default="32", help="lse: channels per stage kept, comma-separated")
    parser.add_argument("--stem-width", type=int, default=16, help="lse: channels of the stem convolution")
    parser.add_argument("--sharpness", type=float, default=5.0, help="lse: r of the pooling")
    parser.add_argument("--patch", default=None, help="lse: cell size in voxels, e.g. 4,8,8: a PatchEncoder whose "
                        "cells see only themselves and a few voxels around (--widths: its two widths) instead of "
                        "the ResNet stages")
    parser.add_argument("--cell-weight", type=float, default=0.0,
                        help="lse: weight of the per-cell lesion loss (needs --worlds)")
    parser.add_argument("--worlds", nargs="*", default=[],
                        help="the synthetic world of each cache (--cache first, then --extra-train), for --cell-weight")
    parser.add_argument("--cell-margin", type=float, default=0.0, help="mm added to a lesion for its cells")
    parser.add_argument("--cell-labels", nargs="+", default=None,
                        help="labels given cell targets (default: the pointing game's focal findings)")
    parser.add_argument("--side-weight", type=float, default=0.0,
                        help="lse: also train the pooled left and right halves of the grid on the sides each "
                             "training report names (read by the CT labeler; no lesion positions)")
    parser.add_argument("--mirror", type=float, default=0.0,
                        help="lse: probability that a training volume is seen mirrored left to right (report sides "
                             "swapped, cell targets mirrored)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from ctxray.utils.machine import describe_machine
    print(describe_machine(), flush=True)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from safetensors.torch import save_file
    from sklearn.metrics import roc_auc_score
    from torch.utils.data import ConcatDataset

    from ctxray.data.dataset import CTCacheDataset
    from ctxray.evaluate.finetune import FinetuneSettings, _predict, train_full
    from ctxray.inference.pointing import FOCAL
    from ctxray.labels import CT_RATE_LABELS
    from ctxray.models.registry import create_volume_encoder

    parts = [CTCacheDataset(args.cache, split="train")]
    parts += [CTCacheDataset(c, split=s) for c in args.extra_train for s in ("train", "valid")]
    train_ds, valid_ds = ConcatDataset(parts), CTCacheDataset(args.cache, split="valid")
    shape = tuple(int(s) for s in train_ds[0]["volume"].shape[-3:])
    torch.manual_seed(args.seed)
    encoder_kwargs = {"norm": args.norm} if args.norm else {}
    if args.encoder_kwargs:
        if args.head == "lse":
            raise SystemExit("--encoder-kwargs is for --head linear (lse has its own options)")
        encoder_kwargs = {**encoder_kwargs, **json.loads(args.encoder_kwargs)}
    t0 = time.perf_counter()
    if (args.cell_weight > 0 or args.side_weight > 0) and args.head != "lse":
        raise SystemExit("--cell-weight and --side-weight train per-location logits: they need --head lse")
    if args.head == "lse":
        from ctxray.inference.localising import fit
        from ctxray.inference.supervised import build_from_info

        ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
        encoder_kwargs = {**encoder_kwargs, "stem_stride": ints(args.stem_stride), "layers": ints(args.layers),
                          "widths": ints(args.widths), "stem_width": args.stem_width, "sharpness": args.sharpness}
        if args.patch:
            encoder_kwargs = {"norm": encoder_kwargs.get("norm", "batch"), "widths": ints(args.widths),
                              "sharpness": args.sharpness, "patch": ints(args.patch)}
        info = {"head": "lse", "encoder_kwargs": encoder_kwargs, "input_shape": list(shape),
                "labels": list(CT_RATE_LABELS)}
        net = build_from_info(info)
        if args.cell_weight > 0:
            train_ds = _with_cells(parts, [args.cache, *args.extra_train], args.worlds, net, args.cell_margin,
                                  args.cell_labels)
        if args.side_weight > 0:
            train_ds = _with_sides(train_ds, CT_RATE_LABELS)
        model = fit(net, train_ds, args.epochs, args.lr, args.batch_size, args.seed, cell_weight=args.cell_weight,
                    side_weight=args.side_weight, mirror=args.mirror)
    else:
        enc = _external(args.external, shape) if args.external else create_volume_encoder(
            args.encoder, input_shape=shape, **encoder_kwargs)
        settings = FinetuneSettings(epochs=args.epochs, lr=args.lr, encoder_lr_mult=1.0, weight_decay=1e-4,
                                    batch_size=args.batch_size)
        model = train_full(enc, train_ds, len(CT_RATE_LABELS), settings, args.seed)
    seconds = time.perf_counter() - t0
    probs = _predict(model, valid_ds, 8)
    y = np.stack([np.asarray(valid_ds[i]["labels"], dtype=np.float64) for i in range(len(valid_ds))])
    from sklearn.metrics import roc_curve

    auroc, thresholds = {}, {}
    for j, name in enumerate(CT_RATE_LABELS):
        ok = ~np.isnan(y[:, j])
        if 0 < y[ok, j].sum() < ok.sum():
            auroc[name] = float(roc_auc_score(y[ok, j], probs[ok, j]))
            fpr, tpr, thr = roc_curve(y[ok, j], probs[ok, j])
            thresholds[name] = float(min(thr[int(np.argmax(tpr - fpr))], 1.0))  # Youden's J on validation
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    cells = {"cell_weight": args.cell_weight, "cell_margin": args.cell_margin, "worlds": list(args.worlds),
             "cell_labels": list(args.cell_labels or FOCAL)}
    encoder = args.external or args.encoder
    doc = {"head": args.head, "encoder": encoder if args.head == "linear" else "LocalisingClassifier",
           "encoder_kwargs": encoder_kwargs, "input_shape": list(shape),
           "labels": list(CT_RATE_LABELS),
           "extra_train": list(args.extra_train), **(cells if args.cell_weight > 0 else {}),
           **({"side_weight": args.side_weight} if args.side_weight > 0 else {}),
           **({"mirror": args.mirror} if args.mirror > 0 else {}),
           "epochs": args.epochs, "lr": args.lr, "seed": args.seed,
           "train_seconds": round(seconds, 1),
           "n_train": len(train_ds), "n_valid": len(valid_ds), "valid_auroc": auroc,
           "thresholds": thresholds, "threshold_source": "Youden's J on the validation split",
           "valid_positives": {n: int(np.nansum(y[:, j])) for j, n in enumerate(CT_RATE_LABELS)}}
    (out / "classifier.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"trained {doc['encoder']} in {seconds:.0f} s; validation AUROC (positives of {len(valid_ds)}):")
    for name, a in auroc.items():
        print(f"  {name:<38} {a:.3f} ({doc['valid_positives'][name]})")
    print(f"  macro {np.mean(list(auroc.values())):.3f}")


if __name__ == "__main__":
    main()
