"""``ctxray generate``: train a report generator, evaluate it, write reports for volumes.

- :func:`train_generator` (``generate train``): frozen CT encoder from a training run, decoder trained
  on the cache's train split, evaluated on its eval split against the references and against the
  trivial baseline that always writes the training set's most common report.
- :func:`run_generator` (``generate run``): reports for a cache split or for NIfTI/DICOM/.npz
  volumes, written as ``reports.csv`` (CT-RATE columns ``VolumeName, Findings_EN, Impressions_EN``)
  and ``reports.jsonl``; with references (a cache) also ``metrics.json``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ctxray.data.ids import ct_id
from ctxray.data.readers import load_volume
from ctxray.data.spec import PreprocessSpec
from ctxray.data.text import report_text
from ctxray.generate.data import (
    ReportItem,
    extract_features,
    format_target,
    load_cached_volume,
    most_common_report,
    read_items,
    split_sections,
)
from ctxray.generate.decoder import ReportDecoder
from ctxray.generate.metrics import score_reports
from ctxray.generate.planned import is_planned
from ctxray.generate.run_planned import planned_reports
from ctxray.generate.search import DecodeConfig, decode
from ctxray.generate.train import (
    GenerateConfig,
    Generator,
    load_encoder,
    load_generator,
    resolve_device,
    save_generator,
    tokenize_reports,
    train_decoder,
)
from ctxray.utils.io import atomic_write_text

log = logging.getLogger(__name__)


def _features(encoder: torch.nn.Module, items: Sequence[ReportItem], cfg: GenerateConfig,
              device: torch.device) -> torch.Tensor:
    loaders = [lambda p=i.path: load_cached_volume(p) for i in items]
    return extract_features(encoder.feature_map, loaders, cfg.decoder.visual_grid, cfg.feature_batch, str(device))


def generate_sections(decoder: ReportDecoder, tokenizer, features: torch.Tensor, cfg: DecodeConfig,
                      batch_size: int = 16) -> list[tuple[str, str]]:
    """Decode (Findings, Impression) from pooled features.

    Shape:
        features: (N, C, *grid)
    """
    device = next(decoder.parameters()).device
    out: list[tuple[str, str]] = []
    for start in range(0, len(features), batch_size):
        visual = decoder.visual_tokens(features[start:start + batch_size].to(device))
        out.extend(split_sections(tokenizer.decode(ids)) for ids in decode(decoder, visual, cfg))
    return out


def generate_texts(decoder: ReportDecoder, tokenizer, features: torch.Tensor, cfg: DecodeConfig) -> list[str]:
    """Decoded reports as ``report_text(findings, impression)`` (the text every stage compares)."""
    return [report_text(f, i) for f, i in generate_sections(decoder, tokenizer, features, cfg)]




def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def train_generator(checkpoint: str | Path, cache: str | Path, out: str | Path, cfg: GenerateConfig,
                    ctrate_root: str | Path | None = None) -> dict:
    """Train, save and evaluate a report generator.

    Args:
        checkpoint: a training run or checkpoint folder (``ctxray train --out RUN``).
        cache: the volume cache the run was trained on.
        out: the generator folder to write.
        cfg: settings; ``cfg.decoder``'s vocabulary and visual fields are filled here.
        ctrate_root: optional CT-RATE-layout root for separate Findings/Impression references.

    Returns:
        the metrics written to ``out/metrics.json``.
    """
    out, device = Path(out), resolve_device(cfg.device)
    encoder, tokenizer, desc = load_encoder(checkpoint, cfg.encoder_init, cfg.seed)
    encoder.to(device)
    train_items = read_items(cache, cfg.train_split, ctrate_root, cfg.max_train)
    eval_items = read_items(cache, cfg.eval_split, ctrate_root, cfg.max_eval)
    dec_cfg = replace(cfg.decoder, visual_dim=int(encoder.feature_dim), vocab_size=tokenizer.vocab_size,
                      bos_id=tokenizer.cls_id, eos_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
    cfg = replace(cfg, decoder=dec_cfg)
    log.info("generator: %d train / %d eval volumes, encoder %s (%s)", len(train_items), len(eval_items),
             desc["name"], cfg.encoder_init)
    feats = _features(encoder, train_items, cfg, device)
    ids, mask = tokenize_reports(tokenizer, [format_target(i.findings, i.impression) for i in train_items],
                                 cfg.decoder.max_length)
    n_cut = int((mask.sum(1) >= cfg.decoder.max_length).sum())
    if n_cut:
        log.warning("%d of %d training reports reach decoder.max_length=%d tokens and are cut", n_cut, len(mask),
                    cfg.decoder.max_length)
    torch.manual_seed(cfg.seed)
    decoder = ReportDecoder(cfg.decoder).to(device)
    history = train_decoder(decoder, feats, ids, mask, cfg)
    save_generator(out, decoder, encoder, desc, tokenizer, cfg, Path(cache) / "spec.json")
    _write_jsonl(out / "log.jsonl", history)
    gen = Generator(decoder, encoder, tokenizer, cfg, desc, None)
    return evaluate_generator(gen, eval_items, train_items, out, device)


def evaluate_generator(gen: Generator, eval_items: Sequence[ReportItem], train_items: Sequence[ReportItem],
                       out: Path, device: torch.device) -> dict:
    """Score a generator and the trivial baseline on ``eval_items``; write metrics and samples."""
    feats = _features(gen.encoder, eval_items, gen.cfg, device)
    generated = generate_texts(gen.decoder, gen.tokenizer, feats, gen.cfg.decode)
    refs = [i.report for i in eval_items]
    baseline = most_common_report(train_items, gen.cfg.label_set)
    metrics = {
        "n_train": len(train_items), "n_eval": len(eval_items), "encoder": gen.encoder_desc,
        "decode": json.loads(json.dumps(gen.cfg.decode.__dict__)),
        "model": score_reports(generated, refs, gen.cfg.label_set),
        "trivial_baseline": score_reports([baseline.report] * len(refs), refs, gen.cfg.label_set),
        "trivial_baseline_report": baseline.report,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    _write_jsonl(out / "samples.jsonl", [{"id": i.id, "reference": i.report, "generated": g}
                                         for i, g in zip(eval_items, generated)])
    return metrics


def _volume_loaders(spec_path: Path | None, volumes: Sequence[str | Path]) -> list[tuple[str, object]]:
    """(id, loader) for NIfTI / DICOM / .npz volumes, preprocessed with the generator's spec."""
    if spec_path is None:
        raise ValueError("the generator folder has no spec.json; cannot preprocess raw volumes")
    spec = PreprocessSpec.load(spec_path)

    def loader(path: Path):
        vol = load_volume(path)
        return torch.from_numpy(spec.apply(vol.hu, vol.spacing_zyx))[None, None]

    out = []
    for v in volumes:
        p = Path(v)
        out.append((ct_id(p.name), lambda p=p: loader(p)))
    return out


def run_generator(model: str | Path, out: str | Path, cache: str | Path | None = None, split: str | None = None,
                  volumes: Sequence[str | Path] | None = None, decode_overrides: dict | None = None,
                  ctrate_root: str | Path | None = None) -> list[dict]:
    """Write generated Findings and Impression for a cache split or for volume files.

    Args:
        model: a generator folder.
        out: output folder (``reports.csv``, ``reports.jsonl``, ``metrics.json`` with references).
        cache, split: a volume cache and its split (None: all), or
        volumes: NIfTI files, DICOM folders or ``.npz`` volumes.
        decode_overrides: ``DecodeConfig`` fields to change (``num_beams``, ``max_new_tokens``...).

    Returns:
        one row per volume: ``id, findings, impression, report`` (+ ``reference`` for a cache).
    """
    if (cache is None) == (not volumes):
        raise ValueError("give exactly one of a cache (with a split) or volume files")
    out = Path(out)
    if is_planned(model):
        return _run_planned(model, out, cache, split, volumes, ctrate_root)
    device = resolve_device("auto")
    gen = load_generator(model, str(device))
    dcfg = replace(gen.cfg.decode, **(decode_overrides or {}))
    items = read_items(cache, split, ctrate_root) if cache is not None else None
    if items is not None:
        ids, loaders = [i.id for i in items], [lambda p=i.path: load_cached_volume(p) for i in items]
    else:
        ids, loaders = map(list, zip(*_volume_loaders(gen.spec_path, volumes or [])))
    feats = extract_features(gen.encoder.feature_map, loaders, gen.cfg.decoder.visual_grid, gen.cfg.feature_batch,
                             str(device))
    sections = generate_sections(gen.decoder, gen.tokenizer, feats, dcfg)
    texts = [report_text(f, i) for f, i in sections]
    rows = []
    for k, ((findings, impression), text) in enumerate(zip(sections, texts)):
        row = {"id": ids[k], "findings": findings, "impression": impression, "report": text}
        if items is not None:
            row["reference"] = items[k].report
        rows.append(row)
    _write_outputs(out, rows)
    if items is not None:
        metrics = score_reports(texts, [i.report for i in items], gen.cfg.label_set)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    return rows


def _run_planned(model: str | Path, out: Path, cache, split, volumes, ctrate_root) -> list[dict]:
    """``run_generator`` for a planned generator folder (``ctxray generate plan``)."""
    items = read_items(cache, split, ctrate_root) if cache is not None else None
    if items is not None:
        ids, loaders = [i.id for i in items], [lambda p=i.path: load_cached_volume(p) for i in items]
    else:
        spec = Path(model) / "spec.json"
        ids, loaders = map(list, zip(*_volume_loaders(spec if spec.is_file() else None, volumes or [])))
    rows = [{"id": vid, **r} for vid, r in zip(ids, planned_reports(model, loaders, str(resolve_device("auto"))))]
    if items is not None:
        for row, item in zip(rows, items):
            row["reference"] = item.report
    _write_outputs(out, rows)
    if items is not None:
        metrics = score_reports([r["report"] for r in rows], [i.report for i in items], "ct")
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    return rows


def _write_outputs(out: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["VolumeName", "Findings_EN", "Impressions_EN"])
    for r in rows:
        writer.writerow([r["id"], r["findings"] or "Not given.", r["impression"] or "Not given."])
    atomic_write_text(out / "reports.csv", buf.getvalue())
    _write_jsonl(out / "reports.jsonl", rows)
