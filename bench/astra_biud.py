"""BIUD with the Astra chest-CT backbone vs the same network randomly initialised vs our default from scratch.

Every run trains the full method of ``configs/demo.yaml`` (RoCo contrastive + pair-wise KD + relation KD against
the retrieved X-ray targets) for the same number of optimiser steps on a seeded subset of N CT-report pairs of
the demo world, all on ONE cache (the demo world resized to ``--shape`` with Astra's HU window [-1000, 200]):

  astra_frozen   ``i3resnet_152`` with ``model.pretrained=astra``, every stage frozen (``freeze_stages=5``):
                 only the linear projection, the KD head and the report tower train
  random_frozen  the same network randomly initialised (seeded), same freezing: the control that isolates the
                 weights from the architecture. Its BatchNorms keep their initial statistics (mean 0, variance 1),
                 so 50 residual blocks add up to features dominated by one direction: BIUD collapses on them
  random_bn_frozen  the same random weights with every BatchNorm's statistics estimated on ``--bn-volumes``
                 training volumes (unlabelled, no reports; one forward pass in training mode): the fair control
  astra_last     Astra weights, stages 1-3 frozen, stage 4 trains (``freeze_stages=4``, ``norm_eval``)
  random_last    its random-init control
  scratch        ``resnet3d_small`` (BatchNorm), trained end to end: the project's default encoder

Frozen prefixes are computed once per volume and reused (``ctxray.models.memo``, saved in ``--work`` so reruns
skip them): the training inputs repeat exactly (no augmentation), so this gives the same model outputs as a plain
forward at a fraction of the cost; each run records the seconds its own extraction took (``feature_s``).

Scores on the validation split: zero-shot macro AUROC (labels with both classes), and a logistic probe at a
fixed label budget (``--probe-budget`` labelled training volumes; ``ctxray.evaluate.headroom.probe_readout``) of
the encoder's pooled features (``probe_features``; for frozen rows these do not depend on training) and of the
trained 256-d embedding (``probe_embedding``).

    python bench/astra_biud.py --world DEMO/world --retrieval DEMO/retrieval --work /tmp/a16 \
        --out bench/astra_results/astra_biud.json [--pairs 50,400] [--rows ...] [--steps 240] [--time-only]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")
log = logging.getLogger("astra_biud")

ROWS: dict[str, tuple[str, dict[str, Any], str | None]] = {  # key -> (encoder, encoder_kwargs, pretrained)
    "astra_frozen": ("i3resnet_152", {"freeze_stages": 5, "norm_eval": True}, "astra"),
    "random_frozen": ("i3resnet_152", {"freeze_stages": 5, "norm_eval": True}, None),
    "astra_last": ("i3resnet_152", {"freeze_stages": 4, "norm_eval": True}, "astra"),
    "random_last": ("i3resnet_152", {"freeze_stages": 4, "norm_eval": True}, None),
    "random_bn_frozen": ("i3resnet_152", {"freeze_stages": 5, "norm_eval": True}, None),
    "scratch": ("resnet3d_small", {"norm": "batch"}, None),
}
BN_ROWS = {"random_bn_frozen"}  # random weights, BatchNorm statistics estimated on --bn-volumes training volumes
COMPARE = [("astra_frozen", "random_bn_frozen"), ("astra_frozen", "scratch"), ("random_bn_frozen", "scratch"),
           ("astra_frozen", "random_frozen"),
           ("astra_last", "random_last"), ("astra_last", "scratch"), ("astra_last", "astra_frozen")]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def make_cache(world: Path, cache: Path, shape: tuple[int, int, int]) -> float:
    """The demo world's CT volumes resized (whole field of view) to ``shape`` with the Astra window. Returns s."""
    from ctxray.data.cache import build_cache
    from ctxray.data.ingest import discover
    from ctxray.data.spec import PreprocessSpec

    if (cache / "manifest.jsonl").is_file():
        return 0.0
    t0 = time.perf_counter()
    spec = PreprocessSpec("astra_" + "x".join(map(str, shape)), (10.0, 5.4, 5.4), shape, hu_min=-1000.0,
                          hu_max=200.0, fit="resize")
    found = discover(world / "ct-rate")
    build_cache(found.items, cache, spec, workers=1, prior_errors=found.errors)
    return time.perf_counter() - t0


def time_encoder(shape: tuple[int, int, int], batch: int) -> dict[str, float]:
    """Seconds of one forward of the Astra ``i3resnet_152`` (all frozen) and of forward + backward with stage 4
    trainable, on a batch of ``batch`` volumes of ``shape``."""
    from ctxray.models.i3resnet import load_pretrained
    from ctxray.models.registry import create_volume_encoder

    out: dict[str, float] = {}
    x = torch.rand(batch, 1, *shape)
    for freeze in (5, 4):
        enc = create_volume_encoder("i3resnet_152", input_shape=shape, freeze_stages=freeze, norm_eval=True)
        load_pretrained(enc, "astra")
        t0 = time.perf_counter()
        if freeze == 5:
            with torch.no_grad():
                enc(x)
            out["forward_s"] = time.perf_counter() - t0
        else:
            enc(x).pow(2).mean().backward()
            out["forward_backward_stage4_s"] = time.perf_counter() - t0
    out["batch"] = batch
    return out


def run_config(args: argparse.Namespace, cache: Path, row: str, pairs: int, seed: int):
    """The ``TrainConfig`` of one run: ``configs/demo.yaml`` at ``--steps`` optimiser steps whatever ``pairs``."""
    from ctxray.config import load_config
    from ctxray.train.config import TrainConfig

    encoder, kwargs, pretrained = ROWS[row]
    per_epoch = max(1, pairs // args.batch_size)  # drop-last batches
    kw = "{" + ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in kwargs.items()) + "}"
    overrides = [f"data.cache={cache}", f"data.retrieval={args.retrieval}", f"data.batch_size={args.batch_size}",
                 f"data.max_train={pairs}", "data.val_split=", f"model.encoder={encoder}",
                 f"model.encoder_kwargs={kw}", f"optim.epochs={max(1, round(args.steps / per_epoch))}",
                 f"seed={seed}", "tensorboard=false", "log_every=100",
                 # the report tower these figures were measured with (before the demo pre-trained it)
                 "text_init=scratch", "optim.text_lr_scale=1", "model.text.attention_dropout=null"]
    if pretrained:
        overrides.append(f"model.pretrained={pretrained}")
    return load_config(TrainConfig, CONFIG, overrides)


def with_memo(model: Any, memo: Any) -> Any:
    """Attach the frozen-prefix memo to a dual encoder's I3ResNet (nothing for other encoders)."""
    from ctxray.models.i3resnet import I3ResNet
    from ctxray.models.memo import attach_prefix_memo

    enc = model.volume_encoder
    if isinstance(enc, I3ResNet) and enc.freeze_stages >= 1:
        attach_prefix_memo(enc, memo)
    return model


def recalibrate_bn(encoder: torch.nn.Module, volumes: torch.Tensor, batch: int = 16) -> None:
    """Replace every BatchNorm's running statistics by their average over ``volumes`` (one pass, no gradients).

    Shape:
        volumes: (N, 1, D, H, W) float in [0, 1]
    """
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    was = encoder.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    with torch.no_grad():
        for i in range(0, len(volumes), batch):
            encoder(volumes[i:i + batch].float())
    for m in norms:
        m.momentum = 0.1
    encoder.train(was)  # frozen parts back on (their new) stored statistics


def score_run(ckpt: Path, cache: Path, memo: Any, budget: int, out: Path) -> dict[str, Any]:
    """Zero-shot probabilities of the validation split (saved) and the two frozen-feature probes."""
    from ctxray.data.dataset import CTCacheDataset
    from ctxray.evaluate.headroom import group_macros, probe_readout
    from ctxray.evaluate.run import embed_dataset, select_labels, zero_shot_scores
    from ctxray.labels import load_labels
    from ctxray.metrics import auroc_per_label
    from ctxray.train.checkpoint import load_model

    model, tok, cfg = load_model(ckpt)
    with_memo(model, memo)
    labels = load_labels()
    emb = embed_dataset(model, tok, CTCacheDataset(cache, split="valid"), None, batch_size=16,
                        max_length=cfg.model.text.max_length, desc="embed valid")
    y = select_labels(emb.labels, labels)
    probs = np.asarray(zero_shot_scores(model, tok, emb.volume, labels, cfg.model.text.max_length))
    np.savez_compressed(out / "valid_scores.npz", y=y, probs=probs, ids=np.array(emb.ids))
    auroc = auroc_per_label(y, probs)
    feats = probe_readout(model.volume_encoder, cache, budget, seed=0)
    embedding = probe_readout(torch.nn.Sequential(model.volume_encoder, model.volume_proj), cache, budget, seed=0)
    keys = ("macro", "xray_visible", "ct_only")
    return {**group_macros(auroc), "per_label": {n: float(a) for n, a in zip(labels.names, auroc)},
            "probe_features": {k: feats[k] for k in keys}, "probe_embedding": {k: embedding[k] for k in keys}}


def paired(work: Path, a: str, b: str, n: int, seed: int, n_boot: int = 1000) -> dict[str, Any] | None:
    """Zero-shot macro AUROC of run ``a`` minus run ``b`` (same N and seed, same validation volumes), with a 95 %
    interval from a bootstrap over validation volumes."""
    from ctxray.evaluate.headroom import group_macros
    from ctxray.metrics import auroc_per_label

    fa, fb = (work / "runs" / f"{r}_n{n}_s{seed}" / "valid_scores.npz" for r in (a, b))
    if not (fa.is_file() and fb.is_file()):
        return None
    za, zb = np.load(fa), np.load(fb)
    y, pa, pb = za["y"], za["probs"], zb["probs"]

    def diff(idx: np.ndarray) -> float:
        return group_macros(auroc_per_label(y[idx], pa[idx]))["macro"] - group_macros(
            auroc_per_label(y[idx], pb[idx]))["macro"]

    rng = np.random.default_rng(0)
    boots = [diff(rng.integers(0, len(y), len(y))) for _ in range(n_boot)]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5])
    return {"a": a, "b": b, "pairs": n, "seed": seed, "diff": diff(np.arange(len(y))), "ci95": [lo, hi]}


def table(results: dict[str, Any], rows: list[str], pairs: list[int]) -> str:
    """Markdown: one line per row, zero-shot / probes / wall time at each N."""
    head = "| row | " + " | ".join(f"{n} pairs: zero-shot, probe feat / emb, wall s" for n in pairs) + " |"
    lines = [head, "|---|" + "---|" * len(pairs)]
    for row in rows:
        cells = []
        for n in pairs:
            runs = [v for k, v in results.items() if k.startswith(f"{row}_n{n}_s")]
            if not runs:
                cells.append("")
                continue
            mean = {k: float(np.mean([r[k] for r in runs])) for k in ("macro", "train_s", "score_s", "feature_s")}
            pf = float(np.mean([r["probe_features"]["macro"] for r in runs]))
            pe = float(np.mean([r["probe_embedding"]["macro"] for r in runs]))
            wall = mean["train_s"] + mean["score_s"]
            cells.append(f"{mean['macro']:.3f}, {pf:.3f} / {pe:.3f}, {wall:.0f} "
                         f"(features {mean['feature_s']:.0f}){' x' + str(len(runs)) if len(runs) > 1 else ''}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", required=True, help="the demo world (its ct-rate/ folder is preprocessed)")
    parser.add_argument("--retrieval", required=True, help="retrieved X-ray targets of that world (ctxray retrieve)")
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True, help="JSON results (a .md table beside it)")
    parser.add_argument("--rows", default="astra_frozen,random_bn_frozen,scratch,astra_last")
    parser.add_argument("--pairs", default="50,400")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shape", default="32,64,64", help="D,H,W of the cache every row reads")
    parser.add_argument("--probe-budget", type=int, default=100)
    parser.add_argument("--bn-volumes", type=int, default=64, help="training volumes for random_bn_frozen's statistics")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summarise-only", action="store_true", help="rewrite the JSON from saved runs")
    parser.add_argument("--time-only", action="store_true", help="time one forward (and backward) and stop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    import ctxray.train.loop as loop
    from ctxray.models.memo import PrefixMemo
    from ctxray.utils.machine import describe_machine

    shape = tuple(int(s) for s in args.shape.split(","))
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    timing_path = work / f"timing_{args.shape.replace(',', 'x')}.json"
    if not timing_path.is_file():
        timing_path.write_text(json.dumps({"shape": shape, "b1": time_encoder(shape, 1),
                                           "b16": time_encoder(shape, 16)}, indent=2))
    timing = json.loads(timing_path.read_text())
    log.info("timing %s", timing)
    if args.time_only:
        return 0
    rows = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {sorted(ROWS)}")
    pairs = [int(n) for n in args.pairs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cache = work / "cache"
    prep_s = make_cache(Path(args.world), cache, shape)
    memo_path = work / "memo.safetensors"
    memo = PrefixMemo.load(memo_path) if memo_path.is_file() else PrefixMemo()
    plain_build = loop.build_model
    bn_volumes: list[torch.Tensor | None] = [None]  # set per run: recalibrate the built encoder's BatchNorms

    def build(*a, **kw):
        model = plain_build(*a, **kw)
        if bn_volumes[0] is not None:
            recalibrate_bn(model.volume_encoder, bn_volumes[0])
        return with_memo(model, memo)

    loop.build_model = build  # the trainer's model, memoised
    state_path = work / "results.json"
    results: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    machine, t_all = describe_machine(), time.perf_counter()

    def write(final: bool) -> None:
        doc = {"machine": machine, "threads": args.threads, "shape": shape, "steps": args.steps,
               "batch_size": args.batch_size, "probe_budget": args.probe_budget, "rows": rows, "pairs": pairs,
               "seeds": seeds, "config": str(CONFIG.name), "timing": timing, "preprocess_s": prep_s,
               "runs": results, "table": table(results, rows, pairs), "complete": final,
               "paired": [d for n in pairs for seed in seeds for a, b in COMPARE
                          if (d := paired(work, a, b, n, seed)) is not None] if final else [],
               "seconds": round(time.perf_counter() - t_all, 1), "command": " ".join(sys.argv)}
        out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
        lines = [f"- {d['a']} - {d['b']} at {d['pairs']} pairs (seed {d['seed']}): {d['diff']:+.3f} "
                 f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" for d in doc["paired"]]
        out.with_suffix(".md").write_text("\n".join([doc["table"], "", *lines]) + "\n")

    for seed in [] if args.summarise_only else seeds:
        for n in pairs:
            for row in rows:
                key = f"{row}_n{n}_s{seed}"
                if key in results:
                    continue
                run = work / "runs" / key
                feature_s0, t0, c0 = memo.seconds, time.perf_counter(), time.process_time()
                if row in BN_ROWS:
                    from ctxray.evaluate.headroom import load_split

                    x_tr = load_split(cache, "train")[0]
                    bn_volumes[0] = x_tr[np.random.default_rng(seed).permutation(len(x_tr))[:args.bn_volumes]]
                else:
                    bn_volumes[0] = None
                loop.train(run_config(args, cache, row, n, seed), run)
                t1 = time.perf_counter()
                res = score_run(run / "checkpoints" / "last", cache, memo, args.probe_budget, run)
                res.update(train_s=round(t1 - t0, 1), score_s=round(time.perf_counter() - t1, 1),
                           feature_s=round(memo.seconds - feature_s0, 1),
                           cpu_s=round(time.process_time() - c0, 1))  # this process's CPU seconds (load-proof)
                results[key] = res
                shutil.rmtree(run / "checkpoints", ignore_errors=True)  # 470 MB each for i3resnet_152
                if ROWS[row][0] == "i3resnet_152":
                    memo.save(memo_path)
                state_path.write_text(json.dumps(results, indent=2) + "\n")
                log.info("%s: zero-shot %.3f, probe features %.3f, embedding %.3f; train %.0f s (features %.0f s), "
                         "score %.0f s", key, res["macro"], res["probe_features"]["macro"],
                         res["probe_embedding"]["macro"], res["train_s"], res["feature_s"], res["score_s"])
                write(final=False)
    write(final=True)
    print(table(results, rows, pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
