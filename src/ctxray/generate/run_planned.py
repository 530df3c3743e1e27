"""``ctxray generate plan``: fit, save and evaluate the planned generator; write its reports.

- :func:`train_planned`: the CT model of a training run, frozen; planner and sentence bank from the cache's
  training split (operating point chosen on training data, or on a calibration cache of volumes the CT model
  never saw, :mod:`ctxray.generate.tune`); evaluated on the eval split against the normal template, the
  oracle plan and the shuffled-plan control.
- :func:`planned_reports`: reports of a planned generator folder for loaded volumes (``generate run`` and
  ``predict`` call it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ctxray.data.cachedir import read_manifest
from ctxray.data.text import report_text
from ctxray.generate.checks import score_generated
from ctxray.generate.data import ReportItem, load_cached_volume, most_common_report, read_items
from ctxray.generate.metrics import score_reports
from ctxray.generate.plan import plans_from_reports, shuffled_plans
from ctxray.generate.planned import (
    PlannedConfig,
    PlannedGenerator,
    VolumeView,
    encode_volumes,
    fit_planned,
    load_planned,
    save_planned,
)
from ctxray.generate.train import freeze
from ctxray.generate.tune import Calibration, calibrate, choose_operating_point
from ctxray.labels import load_labels
from ctxray.models.zeroshot import logit_scale_of, prompt_embeddings
from ctxray.train.checkpoint import load_model
from ctxray.utils.io import atomic_write_text, json_safe

log = logging.getLogger(__name__)


def _load_view(checkpoint: str | Path, swap: bool = False,
               hemithorax: bool = False) -> tuple[VolumeView, tuple[np.ndarray, np.ndarray, float], dict]:
    """The frozen volume tower of a training run (``swap``: with the half-swapped volumes' features;
    ``hemithorax``: with the input's hemithorax quantiles), its zero-shot prompt embeddings and a description."""
    model, tokenizer, train_cfg = load_model(checkpoint)
    model.eval()
    pos, neg = prompt_embeddings(model, tokenizer, load_labels())
    prompts = (pos.numpy().astype(np.float64), neg.numpy().astype(np.float64), float(logit_scale_of(model)))
    mcfg = train_cfg.model
    kwargs = dict(mcfg.encoder_kwargs)
    if mcfg.input_shape is not None:
        kwargs["input_shape"] = [int(s) for s in mcfg.input_shape]
    view = VolumeView(freeze(model.volume_encoder), freeze(model.volume_proj), swap=swap, hemithorax=hemithorax)
    return view, prompts, {"name": mcfg.encoder, "kwargs": kwargs, "source": str(checkpoint), "init": "checkpoint"}


def _loaders(items) -> list[Callable[[], torch.Tensor]]:
    return [lambda p=i.path: load_cached_volume(p) for i in items]


def patient_of(volume_id: str) -> str:
    """CT-RATE names ``{split}_{patient}_{scan}_{reconstruction}``: the patient part (the id itself otherwise)."""
    parts = volume_id.split("_")
    return "_".join(parts[:2]) if len(parts) >= 4 else volume_id


def calibration_items(calibration_cache: str | Path, splits: Sequence[str] | None, cache: str | Path,
                      train_split: str) -> list[ReportItem]:
    """The volumes of a calibration cache (``splits``; None: all), checked not to repeat a training volume.

    Raises:
        ValueError: a calibration volume has the same bytes (manifest sha256) as one of ``cache``'s
            ``train_split`` volumes: the CT model has seen it, which is what calibration must avoid.
    """
    chosen = list(splits or [None])
    seen = {r.get("sha256") for r in read_manifest(cache, train_split)} - {None}
    repeated = [r["id"] for split in chosen for r in read_manifest(calibration_cache, split) if r.get("sha256") in seen]
    if repeated:
        raise ValueError(f"{calibration_cache}: {len(repeated)} calibration volume(s) are training volumes of "
                         f"{cache} (same sha256), e.g. {repeated[0]}; calibrate on volumes the CT model never saw")
    items = [i for split in chosen for i in read_items(calibration_cache, split)]
    log.info("calibration set: %d volumes from %s", len(items), calibration_cache)
    return items


def calibration_set(items: Sequence[ReportItem], feats: dict[str, np.ndarray]) -> Calibration:
    """The :class:`Calibration` of calibration volumes (:func:`calibration_items`) and their features."""
    return Calibration(feats, [i.findings for i in items], [i.impression for i in items],
                       [patient_of(i.id) for i in items])


def train_planned(checkpoint: str | Path, cache: str | Path, out: str | Path, cfg: PlannedConfig,
                  eval_split: str | None = "valid", tune: bool = True, ground_truth: str | Path | None = None,
                  calibration_cache: str | Path | None = None,
                  calibration_splits: Sequence[str] | None = None) -> dict:
    """Fit and save a planned generator; evaluate it on ``eval_split`` (None: no evaluation).

    Args:
        checkpoint: a training run or checkpoint folder.
        cache: the volume cache (train split: planner and sentences; eval split: evaluation).
        out: the generator folder to write.
        tune: choose ``beta`` and ``normal_share`` on the training split or the calibration set (else use
            ``cfg``'s).
        ground_truth: a synthetic world's ``ground_truth.jsonl`` for the laterality check.
        calibration_cache: a cache of volumes with reports the CT model was never trained on: the label
            thresholds, the normal gate's quantile and the operating point are taken on them
            (:mod:`ctxray.generate.tune`).
        calibration_splits: its splits (None: all).

    Returns:
        the metrics written to ``out/metrics.json`` (``{}`` without evaluation).
    """
    out = Path(out)
    view, prompts, desc = _load_view(checkpoint, swap=cfg.side_features == "swap",
                                     hemithorax=cfg.side_features == "hemithorax")
    train = read_items(cache, cfg.train_split)
    sections = ([i.findings for i in train], [i.impression for i in train])
    base = most_common_report(train, cfg.label_set)
    skeleton = (base.findings, base.impression)
    groups = [patient_of(i.id) for i in train]
    feats = encode_volumes(view, _loaders(train))
    flipped = encode_volumes(view, _loaders(train), flip=True)
    calibration = None
    if calibration_cache is not None:
        cal = calibration_items(calibration_cache, calibration_splits, cache, cfg.train_split)
        calibration = calibration_set(cal, encode_volumes(view, _loaders(cal)))
    tuning: list[dict] = []
    if tune:
        cfg, tuning = choose_operating_point(feats, flipped, *sections, skeleton, cfg, groups, prompts,
                                             calibration=calibration)
        log.info("operating point chosen on the %s: beta %.2f, normal share %.2f",
                 "training split" if calibration is None else "calibration set", cfg.beta, cfg.normal_share)
    gen = fit_planned(feats, flipped, *sections, skeleton, cfg, prompts, groups)
    if calibration is not None:
        calibrate(gen, calibration, cfg.beta, cfg.normal_share)
    save_planned(out, gen, view, desc, sections, skeleton, Path(cache) / "spec.json")
    atomic_write_text(out / "tuning.json", json.dumps(tuning, indent=2))
    if eval_split is None:
        return {}
    return evaluate_planned(gen, view, read_items(cache, eval_split), base.report, out, len(train), ground_truth)


def evaluate_planned(gen: PlannedGenerator, view: VolumeView, items, template: str, out: Path, n_train: int,
                     ground_truth: str | Path | None = None) -> dict:
    """Score the generator, the template, the oracle plan and the shuffled plan; write metrics and samples."""
    feats = encode_volumes(view, _loaders(items))
    plans, nb = gen.plan(feats), gen.neighbours(feats)
    refs = [i.report for i in items]

    def texts(ps) -> list[str]:
        return [report_text(f, i) for f, i in gen.write(ps, nb)]

    truths = None
    if ground_truth is not None:
        records = [json.loads(line) for line in Path(ground_truth).read_text().splitlines() if line.strip()]
        by_id = {r["VolumeName"].removesuffix(".nii.gz"): r for r in records}
        truths = [by_id.get(i.id, {}) for i in items]
    generated = texts(plans)
    runs = {"model": generated, "trivial_baseline": [template] * len(items),
            "oracle_plan": texts(plans_from_reports(refs)), "shuffled_plan": texts(shuffled_plans(plans, gen.cfg.seed))}
    metrics: dict = {"n_train": n_train, "n_eval": len(items), "kind": "planned", "trivial_baseline_report": template,
                     "planned": json.loads(json.dumps(gen.cfg.__dict__))}
    for name, t in runs.items():
        metrics[name] = score_reports(t, refs)
        checks = score_generated(t, refs, truths, use_java=False)
        metrics[name]["checks"] = {k: json_safe(checks[k]) for k in ("ce_xray_f1", "ce_ctonly_f1", "contradictions",
                                                                    "laterality_acc", "laterality_n")}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    rows = [{"id": i.id, "reference": i.report, "generated": g, "plan": p.to_dict()}
            for i, g, p in zip(items, generated, plans)]
    atomic_write_text(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return metrics



Loader = Callable[[], torch.Tensor]


def planned_writer(folder: str | Path, device: str = "cpu") -> Callable[[Sequence[Loader]], list[dict]]:
    """Load a planned generator folder once; the returned function writes reports for volume loaders:
    ``{findings, impression, report, plan}`` per volume."""
    gen, view, _ = load_planned(folder, device)

    def write(loaders: Sequence[Callable[[], torch.Tensor]]) -> list[dict]:
        feats = encode_volumes(view, list(loaders))
        plans = gen.plan(feats)
        return [{"findings": f, "impression": i, "report": report_text(f, i), "plan": p.to_dict()}
                for (f, i), p in zip(gen.write(plans, gen.neighbours(feats)), plans)]

    return write


def planned_reports(folder: str | Path, loaders: Sequence[Callable[[], torch.Tensor]],
                    device: str = "cpu") -> list[dict]:
    """Reports of a planned generator folder for volume loaders (see :func:`planned_writer`)."""
    return planned_writer(folder, device)(loaders)
