"""The BIUD ablation on the synthetic world: does distilling from the X-ray expert help with few CT pairs?

Rows (every row trains the same CT dual encoder with the same budget in epochs on the same seeded
subset of N CT-report pairs per seed, and is scored by zero-shot classification of the valid split):

  a  plain CLIP: InfoNCE only                       (loss.correction=none, pkd=0, srkd=0)
  b  + robust contrastive (RoCo)                    (false negatives = equal label vectors)
  c  RoCo + pair-wise KD                            (srkd=0)
  d  RoCo + relation KD                             (pkd=0)
  e  full: RoCo + pair-wise KD + relation KD        (the library defaults)
  f  full, X-rays paired at random                  (retrieve pairing=random)
  g  teacher-free (RoCo only) with 4x the CT pairs  (a reference: what more CT data buys)
  h  (optional, --rows abcdefgh) full with the retrieved targets shuffled across CTs (a control)

c and d add ONE distillation term each to b, so each term's effect is visible alone; e has both.
Every row trains its report tower (a 2-layer BERT, WordPiece on the reports and prompts) from scratch, as
``ctxray demo`` does; ``--text-init teacher`` starts it from the X-ray expert's text tower instead (with the
default MiniLM teacher that is a 22M-parameter tower fine-tuned at the CT model's learning rate, which wrecks
it; add ``--override optim.text_lr_scale=0`` to keep it frozen; README: both measured). The defaults mirror
the demo's CT training (resnet3d_small, batch 16, lr 1e-3, the demo teacher with the locked MiniLM text
tower) at a quarter of its pairs (100 of 400; row g uses all 400) and 32x64x64 volumes, with 40 epochs so a
100-pair run takes ~240 optimiser steps (the demo: ~300).
The world, cache, teacher and both retrievals are built once under --work and reused by later runs.
Thresholds for F1 are Youden-optimal on the evaluated (valid) split itself (optimistic, equally so for
every row); the last checkpoint of each run is evaluated (no model selection on the valid split).

Usage (run from the repository root; 2 CPU cores):

    .venv/bin/python bench/ablation/run_ablation.py --work /tmp/ablation --out bench/ablation/results.json

Prints one table row per setting: mean and standard deviation over seeds of macro AUROC and F1, and
macro AUROC over the labels a radiograph can show vs the CT-only labels.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ctxray.train.variants import NO_KD, NO_PKD, NO_SRKD, PLAIN_CLIP

log = logging.getLogger("ablation")


@dataclass(frozen=True)
class Row:
    """One ablation setting."""

    key: str
    name: str
    overrides: tuple[str, ...]
    pairing: str | None  # retrieval pairing the run reads ("text", "random"), None: no teacher
    pair_mult: int = 1


ROWS: tuple[Row, ...] = (
    Row("a", "plain CLIP (InfoNCE)", PLAIN_CLIP, None),
    Row("b", "+ robust contrastive", NO_KD, None),
    Row("c", "RoCo + pair-wise KD", NO_SRKD, "text"),
    Row("d", "RoCo + relation KD", NO_PKD, "text"),
    Row("e", "full (RoCo + PKD + SRKD)", (), "text"),
    Row("f", "full, random X-ray pairing", (), "random"),
    Row("g", "teacher-free RoCo, 4x CT pairs", NO_KD, None, 4),
    Row("h", "full, teacher targets shuffled across CTs", ("data.shuffle_targets=true",), "text"),  # optional
)


@dataclass
class Settings:
    """Sizes of the ablation (defaults: ~45 min on 2 quiet CPU cores for 3 seeds; see the module docstring)."""

    world: str = "demo"
    spec: str = "ablation"
    teacher: str = "demo"
    teacher_text: str = "minilm"
    teacher_epochs: int = 20
    encoder: str = "resnet3d_small"
    text_init: str = "scratch"
    text_hidden: int = 128
    text_layers: int = 2
    pairs: int = 100
    epochs: int = 40
    batch_size: int = 16
    lr: float = 1e-3
    seeds: tuple[int, ...] = (0, 1, 2)
    world_seed: int = 0
    overrides: tuple[str, ...] = field(default_factory=tuple)


def preprocess_spec(name: str):
    """A ``ctxray.data.spec`` preset; ``ablation`` is the ``small`` preset under the name the recorded
    results carry (32x64x64 voxels of 10x5.4x5.4 mm: the demo world's whole field at half its resolution)."""
    from dataclasses import replace

    from ctxray.data.spec import get_preset

    return replace(get_preset("small"), name="ablation") if name == "ablation" else get_preset(name)


def prepare(work: Path, s: Settings) -> dict[str, Any]:
    """World, cache, teacher and the two retrievals (each skipped when its output already exists)."""
    from ctxray.data.cache import build_cache
    from ctxray.data.ingest import discover
    from ctxray.retrieval import RetrievalConfig, retrieve
    from ctxray.synth.world import generate_world
    from ctxray.teacher.train import preset as teacher_preset
    from ctxray.teacher.train import train_teacher

    world, cache, teacher = work / "world", work / "cache", work / "teacher"
    seconds: dict[str, float] = {}

    def stage(name: str, done: Path, fn) -> None:
        if done.exists():
            log.info("reusing %s (%s exists)", name, done)
            return
        t0 = time.perf_counter()
        fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        log.info("%s done in %.0f s", name, seconds[name])

    stage("synth", world / "world.json", lambda: generate_world(world, preset=s.world, seed=s.world_seed, workers=2))

    def _cache() -> None:
        found = discover(world / "ct-rate")
        build_cache(found.items, cache, preprocess_spec(s.spec), workers=2, prior_errors=found.errors)

    stage("preprocess", cache / "manifest.jsonl", _cache)
    tcfg = teacher_preset(s.teacher, s.teacher_text)
    tcfg.seed = s.world_seed
    tcfg.epochs = s.teacher_epochs
    stage("teacher", teacher / "metrics.json", lambda: train_teacher(world / "xray", teacher, tcfg))
    for pairing in ("text", "random"):
        out = work / f"retrieval_{pairing}"
        stage(f"retrieve {pairing}", out / "targets.json",
              lambda out=out, pairing=pairing: retrieve(RetrievalConfig(str(teacher), cache, world / "xray", out,
                                                                        pairing=pairing, seed=s.world_seed)))
    info: dict[str, Any] = {"seconds": seconds}
    for name, path in (("teacher", teacher / "metrics.json"), ("retrieval_text", work / "retrieval_text/quality.json"),
                       ("retrieval_random", work / "retrieval_random/quality.json")):
        info[name] = json.loads(path.read_text()) if path.is_file() else None
    return info


def train_row(work: Path, s: Settings, row: Row, seed: int) -> Path:
    """Train one (row, seed) run; returns its last checkpoint folder (reused when already trained)."""
    from ctxray.train.loop import train

    run = work / "runs" / f"{row.key}_seed{seed}"
    last = run / "checkpoints" / "last"
    if (run / "metrics.json").is_file() and (last / "model.safetensors").is_file():
        return last
    train(row_config(work, s, row, seed), run)
    return last


def row_config(work: Path, s: Settings, row: Row, seed: int):
    """The ``TrainConfig`` of one (row, seed) run."""
    from ctxray.config import load_config
    from ctxray.train.config import TrainConfig

    overrides = [
        f"data.cache={work / 'cache'}", f"data.batch_size={s.batch_size}", f"data.max_train={s.pairs * row.pair_mult}",
        "data.val_split=", f"model.encoder={s.encoder}", f"text_init={s.text_init}",
        f"optim.epochs={s.epochs}", f"optim.lr={s.lr}", f"seed={seed}", "tensorboard=false", "log_every=50",
        *s.overrides, *row.overrides,
    ]
    if s.text_init == "teacher":
        overrides.append(f"teacher_dir={work / 'teacher'}")
    else:
        overrides += [f"model.text.hidden={s.text_hidden}", f"model.text.layers={s.text_layers}",
                      f"model.text.heads={max(2, s.text_hidden // 32)}"]
    if row.pairing is not None:
        overrides.append(f"data.retrieval={work / f'retrieval_{row.pairing}'}")
    return load_config(TrainConfig, None, overrides)


def evaluate_run(ckpt: Path, cache: Path) -> dict[str, Any]:
    """Zero-shot macro metrics (per volume, no bootstrap) and retrieval of one checkpoint on the valid split."""
    import numpy as np

    from ctxray.data.cachedir import read_scan_ids
    from ctxray.data.dataset import CTCacheDataset
    from ctxray.evaluate.run import embed_dataset, evaluate_embeddings
    from ctxray.labels import load_labels
    from ctxray.train.checkpoint import load_model

    model, tok, cfg = load_model(ckpt)
    labels = load_labels()
    emb = embed_dataset(model, tok, CTCacheDataset(cache, split="valid"), read_scan_ids(cache), batch_size=8,
                        max_length=cfg.model.text.max_length, desc=f"embed valid ({ckpt.parent.parent.name})")
    metrics, _, _ = evaluate_embeddings(model, tok, emb, labels, n_boot=0, max_length=cfg.model.text.max_length)
    zs = metrics["zero_shot"]
    per_label = {n: zs["per_label"][n]["auroc"] for n in labels.names}
    visible = set(labels.xray_visible_names)

    def group(names: list[str]) -> float:
        vals = [per_label[n] for n in names if np.isfinite(per_label[n])]
        return float(np.mean(vals)) if vals else float("nan")

    return {"auroc": zs["macro"]["auroc"], "f1": zs["macro"]["f1"],
            "auroc_xray_visible": group([n for n in labels.names if n in visible]),
            "auroc_ct_only": group([n for n in labels.names if n not in visible]),
            "per_scan_auroc": zs["per_scan"]["macro"]["auroc"],
            "r5_volume_to_report": metrics["retrieval"]["volume_to_report"]["R@5"],
            "per_label_auroc": per_label}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v == v]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def table(results: dict[str, dict]) -> str:
    """The printed table: mean ± sd over seeds per row."""
    cols = [("auroc", "macro AUROC"), ("f1", "macro F1"), ("auroc_xray_visible", "AUROC X-ray-visible"),
            ("auroc_ct_only", "AUROC CT-only"), ("r5_volume_to_report", "R@5 v->r")]
    lines = ["| row | setting | pairs | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for key, r in results.items():
        if not r["runs"]:
            continue
        cells = []
        for c, _ in cols:
            m, sd = _mean_sd([run[c] for run in r["runs"].values()])
            cells.append(f"{m:.3f} ± {sd:.3f}")
        lines.append(f"| {key} | {r['name']} | {r['pairs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnostics(results: dict[str, dict], info: dict[str, Any]) -> str:
    """Why distillation did or did not help: teacher quality, retrieval agreement, per-label KD effect."""
    lines = []
    teacher = info.get("teacher") or {}
    auc = (teacher.get("zero_shot_auc") or {}).get("macro")
    if auc is not None:
        lines.append(f"teacher zero-shot macro AUROC on its own X-ray test split: {auc:.3f}")
    for pairing in ("text", "random"):
        q = info.get(f"retrieval_{pairing}") or {}
        agree = q.get("agreement_top1", {})
        parts = [f"{k} {v['jaccard']:.3f}" for k, v in agree.items() if isinstance(v, dict) and "jaccard" in v]
        if parts:
            lines.append(f"retrieval ({pairing}): label Jaccard of CT report vs top-1 X-ray: " + ", ".join(parts))
    if results.get("b", {}).get("runs") and results.get("e", {}).get("runs"):
        names = list(next(iter(results["b"]["runs"].values()))["per_label_auroc"])
        deltas = []
        for n in names:
            b = [r["per_label_auroc"][n] for r in results["b"]["runs"].values()]
            e = [r["per_label_auroc"][n] for r in results["e"]["runs"].values()]
            mb, me = _mean_sd(b)[0], _mean_sd(e)[0]
            if mb == mb and me == me:
                deltas.append((me - mb, n))
        deltas.sort()
        lines.append("per-label AUROC change full (e) - RoCo only (b), worst to best: "
                     + ", ".join(f"{n} {d:+.3f}" for d, n in deltas))
    return "\n".join(lines)


def write_results(path: Path, s: Settings, results: dict, info: dict, seconds: float, final: bool) -> tuple[str, str]:
    """Write the JSON (after every run, so an interrupted ablation keeps what it measured)."""
    text, diag = table(results), diagnostics(results, info)
    out = {"settings": asdict(s), "rows": results, "prepare": info, "table": text, "diagnostics": diag,
           "seconds": round(seconds, 1), "complete": final, "command": " ".join(sys.argv)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return text, diag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="work folder (world, cache, teacher, retrievals, runs)")
    parser.add_argument("--out", required=True, help="JSON results file")
    parser.add_argument("--rows", default="abcdefg", help="which rows (letters)")
    parser.add_argument("--seeds", default="0,1,2")
    for name, default in asdict(Settings()).items():
        if name not in ("seeds", "overrides"):
            parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--override", action="append", default=[], help="extra TrainConfig a.b=c for every run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(2)
    from ctxray.utils.machine import describe_machine

    print(describe_machine(), flush=True)
    fields = {k: getattr(args, k) for k in asdict(Settings()) if k not in ("seeds", "overrides")}
    s = Settings(**fields, seeds=tuple(int(x) for x in args.seeds.split(",")), overrides=tuple(args.override))
    work, t0 = Path(args.work), time.perf_counter()
    info = prepare(work, s)
    results: dict[str, dict] = {}
    rows = [r for r in ROWS if r.key in args.rows]
    for row in rows:
        results[row.key] = {"name": row.name, "pairs": s.pairs * row.pair_mult, "overrides": list(row.overrides),
                            "pairing": row.pairing, "runs": {}}
    for seed in s.seeds:  # seeds outermost: an interrupted ablation still has every row for the first seeds
        for row in rows:
            t_run = time.perf_counter()
            ckpt = train_row(work, s, row, seed)
            res = evaluate_run(ckpt, work / "cache")
            res["seconds"] = round(time.perf_counter() - t_run, 1)
            results[row.key]["runs"][str(seed)] = res
            log.info("row %s seed %d: macro AUROC %.3f F1 %.3f (%.0f s)", row.key, seed, res["auroc"], res["f1"],
                     res["seconds"])
            write_results(Path(args.out), s, results, info, time.perf_counter() - t0, final=False)
    text, diag = write_results(Path(args.out), s, results, info, time.perf_counter() - t0, final=True)
    print(text)
    print(diag)
    log.info("wrote %s (%.0f s in all)", args.out, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
