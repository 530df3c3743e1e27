"""The powered BIUD ablation: does distilling the X-ray expert help when CT-report pairs are few?

Every run trains the same CT dual encoder for the same number of optimiser steps on a seeded subset of N
CT-report pairs, and is scored on one large validation split (zero-shot per-label AUROC per volume, and a
frozen-feature linear probe at a fixed label budget). Rows:

  plain     InfoNCE only                               (loss.correction=none, pkd=0, srkd=0)
  roco      robust contrastive only                    (pkd=0, srkd=0)
  full      RoCo + pair-wise KD + relation KD          (retrieved X-rays: the method)
  oracle    full, X-rays paired by the CTs' labels     (retrieve pairing=label_oracle: what retrieval can give)
  shuffled  full, targets permuted across CTs          (data.shuffle_targets: the control)
  pkd, srkd one KD term each on top of RoCo; random: full with random X-ray pairing (optional rows)

For each (row, N) the macro AUROC (all / X-ray-visible / CT-only labels) is the mean over seeds, and every
row's difference to ``plain``, to ``roco`` and to ``full`` is paired (same seed, same subset, same validation volumes)
with a 95 % interval from a hierarchical bootstrap (seeds, then validation volumes). A run's validation
probabilities are kept (``runs/<row>_n<N>_s<seed>/valid_scores.npz``), so intervals can be recomputed.
Writes the JSON (after every run: an interrupted ablation keeps what it measured), a markdown table and a
data-efficiency plot (macro AUROC against pairs per row, PNG) next to the JSON.

    .venv/bin/python bench/ablation/powered.py --work /tmp/powered --out bench/ablation/powered.json \
        [--pairs 25,50,100,200,400] [--seeds 0,1,2,3,4] [--rows plain,roco,full,oracle,shuffled] [--steps 240]

The world (``ablation`` synth preset: 1,000 validation volumes), cache, expert and retrievals are built once
under --work and reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxray.train.variants import NO_KD, NO_PKD, NO_SRKD, PLAIN_CLIP

log = logging.getLogger("powered")

ROWS: dict[str, tuple[str, tuple[str, ...], str | None]] = {  # key -> (name, overrides, pairing)
    "plain": ("plain CLIP (InfoNCE)", PLAIN_CLIP, None),
    "roco": ("robust contrastive (RoCo)", NO_KD, None),
    "full": ("full (RoCo + PKD + SRKD)", (), "text"),
    "oracle": ("full, label-oracle pairing", (), "label_oracle"),
    "shuffled": ("full, targets shuffled (control)", ("data.shuffle_targets=true",), "text"),
    "pkd": ("RoCo + PKD", NO_SRKD, "text"),
    "srkd": ("RoCo + SRKD", NO_PKD, "text"),
    "random": ("full, random pairing", (), "random"),
}


@dataclass
class Settings:
    """Sizes of the powered ablation (see the module docstring)."""

    world: str = "ablation"
    world_seed: int = 0
    spec: str = "small"
    teacher: str = "demo"
    teacher_text: str = "minilm"
    encoder: str = "resnet3d_small"
    encoder_norm: str = "batch"  # the supervised ceiling (bench/headroom.py) is 0.71 with BatchNorm vs 0.64 GroupNorm
    text_hidden: int = 128
    text_layers: int = 2
    steps: int = 240
    batch_size: int = 16
    lr: float = 1e-3
    probe_budget: int = 100
    n_boot: int = 200


def prepare(work: Path, s: Settings) -> dict[str, Any]:
    """World, cache, expert and the retrievals every row needs (each skipped when already there)."""
    from ctxray.data.cache import build_cache
    from ctxray.data.ingest import discover
    from ctxray.data.spec import get_preset
    from ctxray.retrieval import RetrievalConfig, retrieve
    from ctxray.synth.world import generate_world
    from ctxray.teacher.train import preset as teacher_preset
    from ctxray.teacher.train import train_teacher

    world, cache, teacher = work / "world", work / "cache", work / "teacher"
    seconds: dict[str, float] = {}

    def stage(name: str, done: Path, fn) -> None:
        if done.exists():
            return
        t0 = time.perf_counter()
        fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        log.info("%s done in %.0f s", name, seconds[name])

    stage("synth", world / "world.json", lambda: generate_world(world, preset=s.world, seed=s.world_seed))

    def _cache() -> None:
        found = discover(world / "ct-rate")
        build_cache(found.items, cache, get_preset(s.spec), workers=2, prior_errors=found.errors)

    stage("preprocess", cache / "manifest.jsonl", _cache)
    tcfg = teacher_preset(s.teacher, s.teacher_text)
    tcfg.seed = s.world_seed
    stage("teacher", teacher / "metrics.json", lambda: train_teacher(world / "xray", teacher, tcfg))
    for pairing in ("text", "label_oracle", "random"):
        out = work / f"retrieval_{pairing}"
        stage(f"retrieve {pairing}", out / "targets.json",
              lambda out=out, pairing=pairing: retrieve(RetrievalConfig(str(teacher), cache, world / "xray", out,
                                                                        pairing=pairing, seed=s.world_seed)))
    info: dict[str, Any] = {"seconds": seconds}
    for name, path in (("teacher", teacher / "metrics.json"), ("retrieval_text", work / "retrieval_text/quality.json"),
                       ("retrieval_label_oracle", work / "retrieval_label_oracle/quality.json")):
        info[name] = json.loads(path.read_text()) if path.is_file() else None
    return info


def run_config(work: Path, s: Settings, row: str, pairs: int, seed: int):
    """The ``TrainConfig`` of one run: ``steps`` optimiser steps whatever ``pairs`` (drop-last batches)."""
    from ctxray.config import load_config
    from ctxray.train.config import TrainConfig

    _, row_overrides, pairing = ROWS[row]
    per_epoch = max(1, pairs // s.batch_size)
    overrides = [
        f"data.cache={work / 'cache'}", f"data.batch_size={s.batch_size}", f"data.max_train={pairs}",
        "data.val_split=", f"model.encoder={s.encoder}", f"model.encoder_kwargs={{norm: {s.encoder_norm}}}",
        f"optim.epochs={max(1, round(s.steps / per_epoch))}",
        f"optim.lr={s.lr}", f"seed={seed}", "tensorboard=false", "log_every=100",
        f"model.text.hidden={s.text_hidden}", f"model.text.layers={s.text_layers}",
        f"model.text.heads={max(2, s.text_hidden // 32)}", *row_overrides,
    ]
    if pairing is not None:
        overrides.append(f"data.retrieval={work / f'retrieval_{pairing}'}")
    return load_config(TrainConfig, None, overrides)


def score_run(ckpt: Path, cache: Path, s: Settings, out: Path) -> dict[str, Any]:
    """Zero-shot probabilities of the validation split (saved) and the frozen-feature probe."""
    from ctxray.data.dataset import CTCacheDataset
    from ctxray.evaluate.headroom import group_macros, probe_readout
    from ctxray.evaluate.run import embed_dataset, select_labels, zero_shot_scores
    from ctxray.labels import load_labels
    from ctxray.metrics import auroc_per_label
    from ctxray.train.checkpoint import load_model

    model, tok, cfg = load_model(ckpt)
    labels = load_labels()
    emb = embed_dataset(model, tok, CTCacheDataset(cache, split="valid"), None, batch_size=16,
                        max_length=cfg.model.text.max_length, desc="embed valid")
    y = select_labels(emb.labels, labels)
    probs = np.asarray(zero_shot_scores(model, tok, emb.volume, labels, cfg.model.text.max_length))
    np.savez_compressed(out / "valid_scores.npz", y=y, probs=probs, ids=np.array(emb.ids))
    auroc = auroc_per_label(y, probs)
    probe = probe_readout(model.volume_encoder, cache, s.probe_budget, seed=0)
    return {**group_macros(auroc), "per_label": {n: float(a) for n, a in zip(labels.names, auroc)},
            "probe": {k: probe[k] for k in ("macro", "xray_visible", "ct_only")}}


def _macros(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    from ctxray.evaluate.headroom import group_macros
    from ctxray.metrics import auroc_per_label

    m = group_macros(auroc_per_label(y, p))
    return np.array([m["macro"], m["xray_visible"], m["ct_only"]])


def paired(work: Path, a: str, b: str, pairs: int, seeds: list[int], n_boot: int) -> dict[str, Any] | None:
    """Row ``a`` minus row ``b`` at ``pairs``: mean over seeds, 95 % hierarchical-bootstrap interval."""
    runs = []
    for seed in seeds:
        fa, fb = (work / "runs" / f"{r}_n{pairs}_s{seed}" / "valid_scores.npz" for r in (a, b))
        if fa.is_file() and fb.is_file():
            za, zb = np.load(fa), np.load(fb)
            runs.append((za["y"], za["probs"], zb["probs"]))
    if not runs:
        return None
    point = np.mean([_macros(y, pa) - _macros(y, pb) for y, pa, pb in runs], axis=0)
    rng = np.random.default_rng(0)
    boots = []
    for _ in range(n_boot):
        picks = rng.integers(0, len(runs), len(runs))
        diffs = []
        for i in picks:
            y, pa, pb = runs[i]
            idx = rng.integers(0, len(y), len(y))
            diffs.append(_macros(y[idx], pa[idx]) - _macros(y[idx], pb[idx]))
        boots.append(np.nanmean(diffs, axis=0))
    lo, hi = np.nanpercentile(np.array(boots), [2.5, 97.5], axis=0)
    keys = ("macro", "xray_visible", "ct_only")
    return {"seeds": len(runs), **{k: {"diff": float(point[i]), "ci95": [float(lo[i]), float(hi[i])]}
                                   for i, k in enumerate(keys)}}


def summarise(work: Path, s: Settings, results: dict, rows: list[str], pairs_list: list[int],
              seeds: list[int]) -> tuple[dict, str]:
    """Means over seeds and paired differences; the markdown table."""
    summary: dict[str, Any] = {}
    lines = ["| row | pairs | seeds | macro AUROC | X-ray-visible | CT-only | probe macro | row - plain (95% CI) | "
             "row - roco (95% CI) | row - full (95% CI) |", "|---|---:|---:|---:|---:|---:|---:|---|---|---|"]
    for row in rows:
        for n in pairs_list:
            runs = [results.get(f"{row}_n{n}_s{seed}") for seed in seeds]
            runs = [r for r in runs if r]
            if not runs:
                continue
            mean = {k: float(np.mean([r[k] for r in runs])) for k in ("macro", "xray_visible", "ct_only")}
            mean["probe"] = float(np.mean([r["probe"]["macro"] for r in runs]))
            mean["sd_macro"] = float(np.std([r["macro"] for r in runs], ddof=1)) if len(runs) > 1 else 0.0
            diffs = {ref: paired(work, row, ref, n, seeds, s.n_boot) if row != ref else None
                     for ref in ("plain", "roco", "full")}
            summary[f"{row}_n{n}"] = {"row": row, "pairs": n, "seeds": len(runs), **mean, "vs": diffs}

            def cell(d: dict | None) -> str:
                if not d:
                    return ""
                lo, hi = d["macro"]["ci95"]
                return f"{d['macro']['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"

            lines.append(f"| {row} | {n} | {len(runs)} | {mean['macro']:.3f} ± {mean['sd_macro']:.3f} | "
                         f"{mean['xray_visible']:.3f} | {mean['ct_only']:.3f} | {mean['probe']:.3f} | "
                         f"{cell(diffs['plain'])} | {cell(diffs['roco'])} | {cell(diffs['full'])} |")
    return summary, "\n".join(lines)


def plot(summary: dict, rows: list[str], path: Path) -> None:
    """Macro AUROC against CT-report pairs, one line per row (error bars: SD over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for row in rows:
        pts = sorted((v["pairs"], v["macro"], v["sd_macro"]) for v in summary.values() if v["row"] == row)
        if pts:
            x, m, sd = zip(*pts)
            ax.errorbar(x, m, yerr=sd, marker="o", capsize=3, label=ROWS[row][0])
    ax.set_xscale("log")
    ticks = sorted({v["pairs"] for v in summary.values()})
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("CT-report pairs (log scale)")
    ax.set_ylabel("zero-shot macro AUROC (validation)")
    ax.set_title("BIUD on the synthetic world: data efficiency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True, help="JSON results (a .md table and a .png plot beside it)")
    parser.add_argument("--rows", default="plain,roco,full,oracle,shuffled")
    parser.add_argument("--pairs", default="25,50,100,200,400")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summarise-only", action="store_true", help="recompute the tables from saved runs")
    for name, default in asdict(Settings()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(args.threads)
    from ctxray.train.loop import train
    from ctxray.utils.machine import describe_machine

    s = Settings(**{k: getattr(args, k) for k in asdict(Settings())})
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {sorted(ROWS)}")
    pairs_list = [int(x) for x in args.pairs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    work, out, t0 = Path(args.work), Path(args.out), time.perf_counter()
    machine = describe_machine()
    print(machine, flush=True)
    info = prepare(work, s)
    state_path = work / "results.json"
    results: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}

    def write(final: bool) -> str:
        summary, text = summarise(work, s, results, rows, pairs_list, seeds)
        doc = {"settings": asdict(s), "rows": {r: ROWS[r][0] for r in rows}, "pairs": pairs_list, "seeds": seeds,
               "runs": results, "summary": summary, "table": text, "prepare": info, "machine": machine,
               "seconds": round(time.perf_counter() - t0, 1), "complete": final, "command": " ".join(sys.argv)}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
        out.with_suffix(".md").write_text(text + "\n")
        if summary:
            plot(summary, rows, out.with_suffix(".png"))
        return text

    if not args.summarise_only:
        for seed in seeds:  # seeds outermost: an interrupted ablation has every row and N for the first seeds
            for n in pairs_list:
                for row in rows:
                    key = f"{row}_n{n}_s{seed}"
                    if key in results:
                        continue
                    run = work / "runs" / key
                    t_run = time.perf_counter()
                    train(run_config(work, s, row, n, seed), run)
                    res = score_run(run / "checkpoints" / "last", work / "cache", s, run)
                    res["seconds"] = round(time.perf_counter() - t_run, 1)
                    results[key] = res
                    state_path.write_text(json.dumps(results, indent=2) + "\n")
                    log.info("%s: macro %.3f (X-ray-visible %.3f, CT-only %.3f), probe %.3f, %.0f s", key,
                             res["macro"], res["xray_visible"], res["ct_only"], res["probe"]["macro"], res["seconds"])
                    write(final=False)
    print(write(final=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
