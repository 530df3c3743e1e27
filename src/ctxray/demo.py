"""``ctxray demo``: every stage on the synthetic chest world, small enough for a laptop CPU.

The demo calls the same library functions as the individual commands, in pipeline order, and writes
one output folder:

```
OUT/world/        ctxray synth          the synthetic world (CT-RATE layout + X-ray gallery)
OUT/cache/        ctxray preprocess     the volume cache
OUT/teacher/      ctxray teacher train  the X-ray expert and its own scores
OUT/retrieval/    ctxray retrieve       CT report -> X-ray pairs and teacher targets
OUT/report_tower/ ctxray pretrain-text  the report tower fitted to the zero-shot prompts on the training reports
OUT/runs/full/    ctxray train          the full BIUD method
OUT/runs/plain/   ctxray train          plain CLIP (InfoNCE only), same data and budget
OUT/eval/{full,plain}/  ctxray evaluate zero-shot + retrieval metrics, ROC plots
OUT/finetune/     ctxray finetune       linear probe with 10% of the labels, vs the same encoder from scratch
OUT/summary.md, OUT/metrics.json        what was done and the key numbers
```
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctxray.config import apply_overrides, from_dict, load_config, to_dict
from ctxray.data.cache import build_cache
from ctxray.data.ingest import discover
from ctxray.data.spec import get_preset
from ctxray.evaluate.finetune import finetune_checkpoint
from ctxray.evaluate.run import evaluate_checkpoint
from ctxray.retrieval import RetrievalConfig, retrieve
from ctxray.synth.world import generate_world
from ctxray.teacher.train import preset as teacher_preset
from ctxray.teacher.train import train_teacher
from ctxray.train.config import ReportTowerConfig, TrainConfig
from ctxray.train.loop import train
from ctxray.train.report_tower import pretrain_report_tower
from ctxray.train.variants import PLAIN_CLIP
from ctxray.utils.io import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    """Sizes of one demo preset.

    Args:
        world: synthetic-world preset. spec: preprocessing preset. teacher: teacher-training preset.
        teacher_text: the teacher's text tower: ``scratch`` or ``minilm`` (the pretrained MiniLM, locked).
        teacher_epochs: teacher training epochs (None: the teacher preset's).
        encoder: volume encoder. text_hidden/text_layers: the report tower.
        epochs, batch_size, lr: CT-model training.
        finetune_fraction: label fraction of the linear-probe comparison.
        n_boot: bootstrap replicates for the confidence intervals.
        overrides: extra ``TrainConfig`` overrides (``a.b=c``) for both runs.
        report_tower: ``ReportTowerConfig`` overrides of the report-tower pre-training both runs start from
            (its tower, width and vocabulary are the runs'); None: no pre-training, the runs' towers start
            from scratch.
    """

    world: str
    spec: str
    teacher: str
    teacher_text: str
    encoder: str
    text_hidden: int
    text_layers: int
    epochs: int
    batch_size: int
    lr: float
    finetune_fraction: float = 0.1
    n_boot: int = 200
    teacher_epochs: int | None = None
    overrides: list[str] = field(default_factory=list)
    report_tower: list[str] | None = None


# Each preset's full run is exactly a config file of configs/ (tests/test_demo.py keeps them equal).
PRESETS: dict[str, DemoSettings] = {
    # the smoke run: the `smoke` world (320 train / 240 validation CTs at 32x64x64), 5 epochs of 40 steps
    "tiny": DemoSettings(world="smoke", spec="small", teacher="tiny", teacher_text="scratch", encoder="resnet3d_tiny",
                         text_hidden=64, text_layers=1, epochs=5, batch_size=8, lr=1e-3, finetune_fraction=0.5,
                         n_boot=50, overrides=["model.embed_dim=64", "model.text.dropout=0.0",
                                               "optim.warmup_steps=5", "optim.precision=fp32",
                                               "tokenizer_vocab=1000", "model.text.attention_dropout=0.0",
                                               "optim.text_lr_scale=0.1"],
                         report_tower=["steps=300"]),
    # Sized to finish in under 15 minutes on a slow 2-core machine: the report tower reads whole reports
    # (up to 425 word pieces; at 128 wide that alone cost ~45% of a step), so it is 64 wide; 8 epochs;
    # one validation at the end (the demo scores the last checkpoint anyway). The CT model trains on the
    # ``small`` grid (32x64x64 at 10 x 5.4 x 5.4 mm) with BatchNorm, like the powered ablation: a step costs
    # ~0.55 s there against ~1.4 s at 48x96x96, and on the demo world the supervised ceiling is 0.71 with
    # BatchNorm against 0.64 with GroupNorm (bench/headroom_results). The expert: 4,000 radiographs
    # projected at 128, trained at 128 through a stride-4 stem, 15 epochs over ~3,650 train radiographs
    # (zero-shot 0.905 on the gallery's test split vs 0.890 at 11 epochs; ~+40 s on 2 cores).
    "demo": DemoSettings(world="demo", spec="small", teacher="demo", teacher_text="minilm", encoder="resnet3d_small",
                         text_hidden=64, text_layers=2, epochs=8, batch_size=16, lr=1e-3, teacher_epochs=15,
                         overrides=["val_every=8", "model.encoder_kwargs={norm: batch}",
                                    "model.text.attention_dropout=0.0", "optim.text_lr_scale=0.1"],
                         report_tower=[]),
}

# The two CT-model runs of the demo's small ablation: name -> loss overrides.
RUNS: dict[str, list[str]] = {
    "plain": list(PLAIN_CLIP),
    "full": [],
}


class _Stages:
    """Runs named stages in order, logging each and recording its wall time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @property
    def wall(self) -> float:
        """Seconds since the first stage began (stages in a second process overlap the others)."""
        return round(time.perf_counter() - self.start, 1)

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        log.info("=== %s ===", name)
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        log.info("--- %s done in %.1f s", name, self.seconds[name])
        return result


def _run_overrides(settings: DemoSettings, cache: Path, retrieval: Path, seed: int) -> list[str]:
    return [
        f"data.cache={cache}", f"data.retrieval={retrieval}", f"data.batch_size={settings.batch_size}",
        f"model.encoder={settings.encoder}", f"model.text.hidden={settings.text_hidden}",
        f"model.text.layers={settings.text_layers}", f"model.text.heads={max(2, settings.text_hidden // 64)}",
        f"optim.epochs={settings.epochs}", f"optim.lr={settings.lr}", f"seed={seed}", "tensorboard=false",
        *settings.overrides,
    ]


def train_config(settings: DemoSettings, cache: Path, retrieval: Path, extra: list[str], seed: int,
                 text_dir: Path | None = None):
    """The demo's ``TrainConfig`` for one run.

    Args:
        text_dir: the pre-trained report tower when the preset has one; default ``cache``'s sibling
            ``report_tower`` (the demo's layout).
    """
    tower = []
    if settings.report_tower is not None:
        tower = ["text_init=pretrained", f"text_dir={text_dir or Path(cache).parent / 'report_tower'}"]
    return load_config(TrainConfig, None, [*_run_overrides(settings, cache, retrieval, seed), *tower, *extra])


def report_tower_config(settings: DemoSettings, seed: int) -> ReportTowerConfig | None:
    """The report-tower pre-training of a preset: the runs' tower, width and vocabulary with the preset's
    ``report_tower`` overrides; None when the preset has none."""
    if settings.report_tower is None:
        return None
    base = load_config(TrainConfig, None, _run_overrides(settings, Path("."), Path("."), seed))
    cfg = ReportTowerConfig(text=base.model.text, embed_dim=base.model.embed_dim,
                            tokenizer_vocab=base.tokenizer_vocab, seed=seed)
    return from_dict(ReportTowerConfig, apply_overrides(to_dict(cfg), settings.report_tower), "report_tower")


def _init_beside(threads: int, level: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s [report tower]: %(message)s",
                        datefmt="%H:%M:%S")


class _BesideProcess:
    """A worker process that runs one job beside the main process, the torch threads split between the two
    (the main process's count is restored on exit). Inactive, and nothing changes, when not ``wanted`` or when
    torch has a single thread. Leaving on an error stops the job at once (the worker is terminated)."""

    def __init__(self, wanted: bool) -> None:
        self.threads = torch.get_num_threads()
        self.active = wanted and self.threads >= 2
        self.pool: Any = None

    def __enter__(self) -> _BesideProcess:
        if self.active:
            mine = self.threads // 2
            self.pool = multiprocessing.get_context("spawn").Pool(
                1, initializer=_init_beside, initargs=(mine, logging.getLogger().getEffectiveLevel()))
            torch.set_num_threads(self.threads - mine)
            log.info("report tower in a process of its own with %d thread(s); this process keeps %d",
                     mine, self.threads - mine)
        return self

    def submit(self, fn: Callable, *args: Any) -> Callable[[], Any]:
        """Start ``fn(*args)`` in the worker; returns a function that waits for its result (re-raising its error)."""
        assert self.pool is not None
        return self.pool.apply_async(fn, args).get

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.pool is not None:
            if exc_type is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            torch.set_num_threads(self.threads)


def run_demo(out: str | Path, preset: str = "demo", seed: int = 0, workers: int = 1,
             overwrite: bool = False, parallel: bool = True) -> dict[str, Any]:
    """Run the whole pipeline on a fresh synthetic world.

    Args:
        out: output folder (see the module docstring).
        preset: ``demo`` (the README's main job) or ``tiny`` (tests, seconds).
        seed: seed of the world and of every stage.
        workers: preprocessing worker processes.
        overwrite: delete an existing ``out`` first.
        parallel: pre-train the report tower in a second process while the expert trains and retrieves (each
            on half of torch's threads); False runs every stage in turn on all of them. Either way the figures
            repeat on one machine; they differ between the two (thread counts change float sums).

    Returns:
        The summary written to ``OUT/metrics.json``.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown demo preset {preset!r}; choose from {sorted(PRESETS)}")
    settings = PRESETS[preset]
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out}: not empty; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages()
    world, cache, teacher_dir, ret = out / "world", out / "cache", out / "teacher", out / "retrieval"

    stage("synth", lambda: generate_world(world, preset=settings.world, seed=seed))
    found = stage("discover", lambda: discover(world / "ct-rate"))
    stage("preprocess", lambda: build_cache(found.items, cache, get_preset(settings.spec), workers=workers,
                                            prior_errors=found.errors))
    tcfg = teacher_preset(settings.teacher, settings.teacher_text)
    tcfg.seed = seed
    tcfg.epochs = settings.teacher_epochs or tcfg.epochs
    retrieval = RetrievalConfig(str(teacher_dir), cache, world / "xray", ret, seed=seed)
    tower_cfg = report_tower_config(settings, seed)
    with _BesideProcess(tower_cfg is not None and parallel) as beside:
        # the report tower reads only the cache's reports: it trains in a process of its own while the expert
        # trains and retrieves, each on half the threads (on 2 cores ~20% less wall time than one after the other)
        job = beside.submit(pretrain_report_tower, cache, out / "report_tower", tower_cfg) if beside.active else None
        teacher_metrics = stage("teacher", lambda: train_teacher(world / "xray", teacher_dir, tcfg))
        quality = stage("retrieve", lambda: retrieve(retrieval))
        tower = None
        if job is not None:
            tower = stage("report tower (waiting for its process)", job)
        elif tower_cfg is not None:
            tower = stage("report tower", lambda: pretrain_report_tower(cache, out / "report_tower", tower_cfg))

    # Evaluate the *last* checkpoint: "best" is chosen by validation AUROC, and the demo scores the
    # validation split, so using "best" would select the model on the split it is scored on.
    results: dict[str, dict] = {}
    for name, extra in RUNS.items():
        cfg = train_config(settings, cache, ret, extra, seed)
        last = out / "runs" / name / "checkpoints" / "last"
        results[name] = {"train": stage(f"train {name}", lambda cfg=cfg, name=name: train(cfg, out / "runs" / name))}
        results[name]["eval"] = stage(
            f"evaluate {name}",
            lambda last=last, name=name: evaluate_checkpoint(last, cache, out / "eval" / name, split="valid",
                                                             n_boot=settings.n_boot, seed=seed),
        )
    ft = stage("finetune", lambda: finetune_checkpoint(str(out / "runs" / "full" / "checkpoints" / "last"), str(cache),
                                                       str(out / "finetune"), mode="probe",
                                                       fractions=(settings.finetune_fraction,), seed=seed))
    summary = _summary(preset, seed, teacher_metrics, quality, results, ft, stage.seconds, stage.wall, tower)
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2, default=float))
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    for png in sorted((out / "eval" / "full").glob("*.png")):
        shutil.copy2(png, out / png.name)
    log.info("demo finished in %.0f s: %s", summary["total_seconds"], out / "summary.md")
    return summary


def _macro(metrics: dict) -> dict[str, float]:
    macro = metrics.get("zero_shot", {}).get("macro", {})
    return {k: macro[k] for k in ("auroc", "f1", "accuracy", "precision", "recall") if k in macro}


def _retrieval(metrics: dict) -> dict[str, float]:
    r = metrics.get("retrieval", {})
    return {f"{d}.{k}": r[d][k] for d in ("volume_to_report", "report_to_volume") for k in ("R@1", "R@5", "R@10")
            if d in r and k in r[d]}


def _summary(preset: str, seed: int, teacher: dict, quality: dict, results: dict, ft: dict,
             seconds: dict[str, float], wall: float, tower: dict | None = None) -> dict[str, Any]:
    return {
        "report_tower": None if tower is None else {
            "steps": tower["steps"], "seconds": tower["seconds"], "beside": "report tower" not in seconds,
            **{f"prompts_on_{split}_reports": {w: tower["prompts_on_reports"][w][split]["macro"]
                                               for w in ("before", "after")}
               for split in tower["prompts_on_reports"]["after"]}},
        "preset": preset,
        "seed": seed,
        "seconds": seconds,
        "total_seconds": wall,
        "teacher": teacher,
        "retrieval_quality": quality,
        "runs": {name: {"zero_shot_macro": _macro(r["eval"]), "retrieval": _retrieval(r["eval"]),
                        "report_zero_shot_macro": r["eval"].get("report_zero_shot", {}).get("macro"),
                        "train": {k: v for k, v in r["train"].items() if not isinstance(v, dict)}}
                 for name, r in results.items()},
        "finetune": ft,
    }


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: what was done and the key numbers."""
    runs = summary["runs"]
    keys = ["auroc", "f1", "accuracy", "precision", "recall"]
    lines = [
        f"# ctxray demo (preset `{summary['preset']}`, seed {summary['seed']})",
        "",
        "Synthetic chest world -> preprocess -> X-ray expert -> language-guided retrieval -> BIUD training "
        "-> zero-shot evaluation -> linear probe. Plain CLIP (InfoNCE only) and the full method are trained on "
        "the same pairs with the same budget.",
        "",
        "## Zero-shot classification on the validation split (macro over labels)",
        "",
        "| run | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for name, r in runs.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(r["zero_shot_macro"].get(k, "n/a")) for k in keys) + " |")
    lines += ["", "The same prompts scoring the validation *reports* (the report tower's ceiling on zero-shot): "
              + ", ".join(f"{n} {_fmt(r.get('report_zero_shot_macro'))}" for n, r in runs.items()) + ".", ""]
    tower = summary.get("report_tower")
    if tower:
        lines += ["Both runs' report towers start from one pre-trained on the training reports "
                  f"({tower['steps']} steps, {tower['seconds']} s"
                  f"{' in a process beside the expert and retrieval' if tower.get('beside') else ''}; "
                  "`report_tower/`): the prompts on the "
                  + ", ".join(f"{split.split('_')[2]} reports {_fmt(v['before'])} before, {_fmt(v['after'])} after"
                              for split, v in tower.items() if split.startswith("prompts_on_")) + ".", ""]
    lines += ["## Training health", "", "| run | collapsed steps | PKD last epoch | PKD, shuffled targets | "
              "PKD, best constant |", "|---|---|---|---|---|"]
    for name, r in runs.items():
        t = r["train"]
        lines.append(f"| {name} | {t.get('collapsed_steps', 'n/a')} | {_fmt(t.get('pkd_last_epoch', 'n/a'))} | "
                     f"{_fmt(t.get('pkd_shuffled_last_epoch', 'n/a'))} | {_fmt(t.get('pkd_mean_level', 'n/a'))} |")
    q = summary.get("retrieval_quality", {})
    agree = q.get("agreement_top1", {})
    if agree:
        lines += ["", "## Language-guided retrieval (top-1 X-ray, X-ray-visible labels: exact / Jaccard)", "",
                  "| pairing | exact | Jaccard |", "|---|---|---|"]
        for name in ("written", "random", "label_oracle"):
            if name in agree:
                lines.append(f"| {name} | {_fmt(agree[name]['exact'])} | {_fmt(agree[name]['jaccard'])} |")
        hub = q.get("hubness", {})
        lines += ["", f"Most CTs sharing one X-ray: {hub.get('max_ct_per_xray', 'n/a')} of {q.get('n_ct', 'n/a')}; "
                  f"normal CTs paired with an abnormal X-ray: {_fmt(q.get('normal_to_abnormal', 'n/a'))}."]
    lines += ["", "## Linear probe with a label fraction (validation, macro AUROC / F1)", "",
              "| labels | n train | pretrained (full run) | same encoder from scratch |", "|---|---|---|---|"]
    for frac, res in summary["finetune"].get("fractions", {}).items():
        cells = [" / ".join(_fmt(res.get(w, {}).get("macro", {}).get(k, "n/a")) for k in ("auroc", "f1"))
                 for w in ("pretrained", "scratch")]
        lines.append(f"| {float(frac):.0%} | {res.get('n_train', 'n/a')} | {cells[0]} | {cells[1]} |")
    lines += ["", "## Report <-> volume retrieval (validation)", "", "| run | metric | value |", "|---|---|---|"]
    for name, r in runs.items():
        lines += [f"| {name} | {k} | {_fmt(v)} |" for k, v in r["retrieval"].items()]
    lines += ["", "## Stage times (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["seconds"].items()]
    lines += ["", f"Total (wall): {summary['total_seconds']} s. Details: `metrics.json`, `eval/*/metrics.json`, "
              "`finetune/summary.csv`, `teacher/metrics.json`, `retrieval/quality.json`.", ""]
    return "\n".join(lines)
