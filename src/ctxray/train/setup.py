"""Everything a run builds before its first step: config, tokenizer, data, targets, model."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from ctxray.config import to_dict
from ctxray.models.dual import DualEncoder, init_text_from_teacher, teacher_text_tower
from ctxray.models.text import Tokenizer
from ctxray.train.config import TrainConfig, read_stored_config
from ctxray.train.data import (
    PairCollator,
    ResumableSampler,
    cache_input_shape,
    read_manifest,
    shuffled_id_map,
    subset_indices,
)
from ctxray.train.runtime import Runtime

log = logging.getLogger(__name__)


def stored_config(run_dir: Path) -> TrainConfig:
    """The resolved config a run saved in ``RUN/checkpoints/last/config.json``."""
    path = Path(run_dir) / "checkpoints" / "last" / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nothing to resume (no last checkpoint in {run_dir})")
    return read_stored_config(json.loads(path.read_text()), str(path))


def check_resume_config(given: TrainConfig, stored: TrainConfig) -> None:
    """Warn about settings that differ between the given config and the run's (the run's win)."""
    a, b = to_dict(given), to_dict(stored)
    for section in ("loss", "optim", "data", "seed"):
        if a[section] != b[section]:
            log.warning("--resume: %s differs from the run's saved config; continuing with the saved one", section)


def build_tokenizer(config: TrainConfig, reports: list[str]) -> Tokenizer:
    """The report tokenizer: the teacher's, a Hugging Face folder's, or WordPiece trained on ``reports``.

    A trained vocabulary also sees the zero-shot prompts, so no prompt word is split into characters.
    """
    if config.text_init == "teacher":
        return Tokenizer.from_pretrained(Path(config.teacher_dir) / "tokenizer")
    if config.model.text.kind == "hf":
        return Tokenizer.from_pretrained(config.model.text.hf_path)
    from ctxray.labels import load_labels

    labels = load_labels()
    prompts = [p for name in labels.names for group in labels.prompts(name) for p in group]
    return Tokenizer.train(list(reports) + prompts, vocab_size=config.tokenizer_vocab)


@dataclass
class RunData:
    """The run's datasets, loaders, collator and teacher targets."""

    train_set: Any
    train_loader: DataLoader
    sampler: ResumableSampler
    loader_gen: torch.Generator
    val_loader: DataLoader | None
    collator: PairCollator
    targets: Any


def _load_targets(config: TrainConfig) -> Any:
    if not config.needs_targets:
        return None
    from ctxray.retrieval.targets import load_targets

    targets = load_targets(config.data.retrieval)
    return targets.centred() if config.loss.kd_center else targets


def build_data(config: TrainConfig, tokenizer: Tokenizer, rt: Runtime) -> RunData:
    """Datasets (train subset, validation), the resumable sampler and the collator."""
    from ctxray.data.dataset import CTCacheDataset

    da = config.data
    full = CTCacheDataset(da.cache, split=da.train_split, augment=da.augment, seed=config.seed)
    train_set = Subset(full, subset_indices(len(full), da.max_train, config.seed))
    targets = _load_targets(config)
    id_map = None
    if da.shuffle_targets and targets is not None:
        ids = [str(r["id"]) for r in read_manifest(da.cache, da.train_split)]
        id_map = shuffled_id_map(ids, config.seed)
    collator = PairCollator(tokenizer, config.model.text.max_length, targets, config.loss.target,
                            with_teacher=config.loss.pkd > 0 or config.loss.srkd > 0,
                            with_ct_text=config.needs_teacher_text, id_map=id_map)
    sampler = ResumableSampler(train_set, rt.world_size, rt.rank, seed=config.seed)
    if sampler.num_samples < da.batch_size:
        raise ValueError(f"{da.cache}: split {da.train_split!r} gives {sampler.num_samples} pairs per rank, fewer "
                         f"than data.batch_size={da.batch_size}")
    gen = torch.Generator()
    loader = DataLoader(train_set, batch_size=da.batch_size, sampler=sampler, collate_fn=collator,
                        num_workers=da.num_workers, drop_last=True, generator=gen,
                        pin_memory=rt.device.type == "cuda")
    val_loader = None
    if da.val_split:
        val = CTCacheDataset(da.cache, split=da.val_split, augment=None, seed=config.seed)
        if len(val) >= 2:
            chosen = subset_indices(len(val), da.max_val, config.seed)
            shard = Subset(val, chosen[rt.rank::rt.world_size])  # every rank embeds its share
            val_loader = DataLoader(shard, batch_size=da.batch_size, shuffle=False, num_workers=da.num_workers,
                                    collate_fn=PairCollator(tokenizer, config.model.text.max_length))
        elif rt.main:
            log.warning("%s: validation split %r has %d volumes; validation is skipped", da.cache, da.val_split,
                        len(val))
    return RunData(train_set, loader, sampler, gen, val_loader, collator, targets)


def report_token_stats(tokenizer: Tokenizer, reports: list[str], max_length: int) -> dict[str, float]:
    """Token counts of the training reports against the report tower's ``max_length``.

    Returns:
        ``n``, ``max``, ``median``, ``p95``, ``max_length``, ``truncated`` (count) and ``truncated_fraction``.
    """
    import numpy as np

    lengths = np.asarray(tokenizer.lengths(reports) if reports else [0])
    cut = int((lengths > max_length).sum())
    return {"n": len(reports), "max": int(lengths.max()), "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)), "max_length": int(max_length), "truncated": cut,
            "truncated_fraction": cut / max(1, len(reports))}


def check_report_lengths(stats: dict[str, float], max_truncated: float, where: str) -> None:
    """Log how many training reports the report tower cuts; raise above ``max_truncated`` of them.

    Raises:
        ValueError: naming the share cut, the longest report and the settings that fix it.
    """
    if stats["truncated"] == 0:
        log.info("%s: report tokens median %.0f, max %d, within max_length %d", where, stats["median"],
                 stats["max"], stats["max_length"])
        return
    msg = (f"{where}: {stats['truncated']} of {stats['n']} training reports ({stats['truncated_fraction']:.1%}) "
           f"are longer than model.text.max_length={stats['max_length']} tokens (median {stats['median']:.0f}, "
           f"max {stats['max']}) and would be cut, losing their last sections")
    if stats["truncated_fraction"] > max_truncated:
        raise ValueError(msg + f"; raise model.text.max_length (>= {stats['max']}) or accept it with "
                         f"data.max_truncated={stats['truncated_fraction']:.2f}")
    log.warning("%s (within data.max_truncated=%g)", msg, max_truncated)


def kd_mean_level(data: RunData, config: TrainConfig) -> float:
    """PKD of the best constant prediction on this run's training targets: the loss a student that ignores
    its CT reaches (NaN without PKD). Centred targets put it near 1; uncentred, near ``1 - |mean|``."""
    if data.targets is None or config.loss.pkd <= 0:
        return float("nan")
    from ctxray.losses import PairwiseKDLoss

    ids = [str(data.train_set.dataset.entries[i]["id"]) for i in data.train_set.indices]
    t = data.targets.lookup(ids, config.loss.target)  # (N, Dt)
    mean = t.mean(0, keepdim=True).expand_as(t)
    return float(PairwiseKDLoss(config.loss.pkd_kind)(mean, t))


def resolve_text(config: TrainConfig) -> TrainConfig:
    """With ``text_init="teacher"``, the report tower's settings become the teacher's.

    A pretrained (``hf``) tower keeps the run's ``max_length`` up to its position embeddings: the
    expert reads short radiograph reports (and head-and-tail cuts of CT reports for retrieval) at its
    own budget, but the CT model must read whole CT reports.
    """
    if config.text_init != "teacher":
        return config
    text, _ = teacher_text_tower(config.teacher_dir)
    if text.kind == "hf":
        text = dataclasses.replace(text, max_length=min(config.model.text.max_length, _hf_positions(text.hf_path)))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, text=text))


def _hf_positions(path: str | None) -> int:
    """``max_position_embeddings`` of a Hugging Face model folder (512 when its config does not say)."""
    try:
        return int(json.loads((Path(path or "") / "config.json").read_text()).get("max_position_embeddings", 512))
    except (OSError, ValueError):
        return 512


def resolve_config(config: TrainConfig, tokenizer: Tokenizer, targets: Any) -> TrainConfig:
    """Fill what the data decides: input shape, vocabulary size, teacher width, MLM head."""
    m = config.model
    text = m.text
    if text.kind == "bert":
        text = dataclasses.replace(text, vocab_size=tokenizer.vocab_size)
    teacher_dim = None
    if targets is not None and (config.loss.pkd > 0 or config.loss.srkd > 0):
        teacher_dim = int(targets.dim)
    model = dataclasses.replace(m, text=text, teacher_dim=teacher_dim, mlm_head=config.loss.mlm > 0,
                                input_shape=tuple(m.input_shape) if m.input_shape else
                                cache_input_shape(config.data.cache))
    return dataclasses.replace(config, model=model)


def run_text_tower(config: TrainConfig, out: Path, backbone: Any, main: bool) -> TrainConfig:
    """A Hugging Face report tower travels with the run: copied into ``RUN/text_backbone/`` (config, weights,
    tokenizer, licence, README; by the main rank) and named by that relative path in the returned config, so
    every checkpoint's ``config.json`` points inside the run folder, never at the source folder.

    Args:
        config: a resolved config; a tower that is not ``hf``, or already relative (a resumed run), is left alone.
        out: the run folder.
        backbone: the loaded ``transformers`` model (written as safetensors when the source holds pickles only).
        main: whether this process writes files (rank 0).
    """
    from ctxray.models.hf_folder import copy_text_backbone
    from ctxray.train.checkpoint import TEXT_BACKBONE_DIR

    text = config.model.text
    if text.kind != "hf" or not text.hf_path or text.hf_path == TEXT_BACKBONE_DIR:
        return config
    src, dest = Path(text.hf_path).resolve(), Path(out) / TEXT_BACKBONE_DIR
    if main and src != dest.resolve():
        tmp = Path(out) / f".{TEXT_BACKBONE_DIR}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        Path(out).mkdir(parents=True, exist_ok=True)
        names = copy_text_backbone(src, tmp, backbone)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        log.info("report tower %s copied into %s (%d files)", src, dest, len(names))
    text = dataclasses.replace(text, hf_path=TEXT_BACKBONE_DIR)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, text=text))


def tower_resolved(config: TrainConfig, root: Path) -> TrainConfig:
    """``config`` with a relative ``hf`` tower path resolved against the run folder ``root`` (to build a model)."""
    from ctxray.train.checkpoint import text_backbone_path

    path = text_backbone_path(config, root, "the run's config")
    if path is None:
        return config
    text = dataclasses.replace(config.model.text, hf_path=str(path))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, text=text))


def build_model(config: TrainConfig, initialise: bool = True) -> DualEncoder:
    """A model of a resolved config; with ``initialise``, volume encoder weights from ``model.pretrained`` or
    ``encoder_init`` and the text tower from the teacher when asked (a resumed run loads its own weights instead)."""
    model = DualEncoder(config.model)
    if not initialise:
        return model
    if config.model.pretrained:
        from ctxray.models.i3resnet import load_pretrained

        load_pretrained(model.volume_encoder, config.model.pretrained)
    if config.encoder_init:
        from ctxray.models.registry import load_encoder_weights

        load_encoder_weights(model.volume_encoder, config.encoder_init)
    if config.text_init == "teacher":
        _, state = teacher_text_tower(config.teacher_dir)
        init_text_from_teacher(model, state)
    return model
