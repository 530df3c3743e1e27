"""Everything a run builds before its first step: config, tokenizer, data, targets, model."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ctxray.config import to_dict
from ctxray.data.cachedir import CacheIndex, read_cache, read_spec
from ctxray.data.dataset import CTCacheDataset
from ctxray.data.shards import read_index
from ctxray.labeler import label_matrix, label_names
from ctxray.labels import CT_RATE_LABELS, LabelSet, load_labels
from ctxray.losses import PairwiseKDLoss
from ctxray.models.dual import DualEncoder, init_text_from_teacher, teacher_text_config, teacher_text_tower
from ctxray.models.hf_folder import copy_text_backbone
from ctxray.models.i3resnet import load_pretrained
from ctxray.models.registry import load_encoder_weights
from ctxray.models.text import Tokenizer
from ctxray.retrieval.targets import load_targets
from ctxray.train.checkpoint import TEXT_BACKBONE_DIR, read_report_tower, text_backbone_path
from ctxray.train.config import TrainConfig, read_stored_config
from ctxray.train.data import (
    PairCollator,
    ResumableSampler,
    shuffled_id_map,
    subset_indices,
)
from ctxray.train.runtime import Runtime
from ctxray.train.shard_data import build_shard_train, build_shard_val, train_rows

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
    if config.text_init == "pretrained":
        read_report_tower(config.text_dir)  # a folder that is not a report tower is named as such
        return Tokenizer.from_pretrained(Path(config.text_dir) / "tokenizer")
    if config.model.text.kind == "hf":
        return Tokenizer.from_pretrained(config.model.text.hf_path)
    return train_tokenizer(reports, config.tokenizer_vocab)


def train_tokenizer(reports: list[str], vocab_size: int) -> Tokenizer:
    """A WordPiece vocabulary of the training reports and the zero-shot prompts (so no prompt word is split
    into characters)."""
    labels = load_labels()
    prompts = [p for name in labels.names for group in labels.prompts(name) for p in group]
    return Tokenizer.train(list(reports) + prompts, vocab_size=vocab_size)


@dataclass
class RunData:
    """The run's datasets, loaders, collator and teacher targets."""

    train_set: Any
    train_loader: DataLoader
    sampler: ResumableSampler | None  # None when streaming shards
    loader_gen: torch.Generator
    val_loader: DataLoader | None
    collator: PairCollator
    targets: Any
    train_ids: list[str]
    micro_batches: int  # per rank per epoch
    shards: Any = None  # a ``shard_data.ShardEpochs`` when ``data.shards`` is set


def _load_targets(config: TrainConfig) -> Any:
    if not config.needs_targets:
        return None
    targets = load_targets(config.data.retrieval)
    return targets.centred() if config.loss.kd_center else targets


def open_cache(config: TrainConfig) -> CacheIndex | None:
    """The run's preprocess cache (spec and manifest), read once for every split; None without ``data.cache``."""
    return read_cache(config.data.cache) if config.data.cache else None


def build_data(config: TrainConfig, tokenizer: Tokenizer, rt: Runtime, cache: CacheIndex | None = None) -> RunData:
    """Datasets (train subset or shard stream, validation), the resumable sampler or stream, and the collator.

    Args:
        cache: the cache already read (:func:`open_cache`); read here when None.
    """
    da = config.data
    cache = cache if cache is not None else open_cache(config)
    targets = _load_targets(config)
    collator_args = dict(with_teacher=config.loss.distils,
                         with_ct_text=config.needs_teacher_text)
    gen = torch.Generator()
    pin = rt.device.type == "cuda"
    if da.shards:
        train_set, epochs = build_shard_train(config, rt.rank, rt.world_size)
        all_ids = [str(m["id"]) for _, m in train_set.members]  # the index's order, which meta.jsonl follows
        _check_spec(config, train_set.spec, cache)
        collator = _collator(config, tokenizer, targets, all_ids, collator_args, cache)
        loader = DataLoader(train_set, batch_size=da.batch_size, collate_fn=collator, num_workers=da.num_workers,
                            drop_last=True, generator=gen, pin_memory=pin)
        sampler, train_ids, micro = None, all_ids, epochs.micro_batches
    else:
        full = CTCacheDataset(cache, split=da.train_split, augment=da.augment, seed=config.seed)
        train_set = Subset(full, subset_indices(len(full), da.max_train, config.seed))
        all_ids = [str(e["id"]) for e in full.entries]
        collator = _collator(config, tokenizer, targets, all_ids, collator_args, cache)
        sampler = ResumableSampler(train_set, rt.world_size, rt.rank, seed=config.seed)
        if sampler.num_samples < da.batch_size:
            raise ValueError(f"{da.cache}: split {da.train_split!r} gives {sampler.num_samples} pairs per rank, "
                             f"fewer than data.batch_size={da.batch_size}")
        loader = DataLoader(train_set, batch_size=da.batch_size, sampler=sampler, collate_fn=collator,
                            num_workers=da.num_workers, drop_last=True, generator=gen, pin_memory=pin)
        train_ids = [all_ids[i] for i in train_set.indices]
        epochs, micro = None, sampler.num_samples // da.batch_size
    return RunData(train_set, loader, sampler, gen, _val_loader(config, tokenizer, rt, cache), collator, targets,
                   train_ids, micro, epochs)


def _collator(config: TrainConfig, tokenizer: Tokenizer, targets: Any, ids: list[str],
              args: dict[str, bool], cache: CacheIndex | None = None) -> PairCollator:
    """The training collator; ``ids`` (the whole training split) feed the shuffled-targets control."""
    id_map = shuffled_id_map(ids, config.seed) if config.data.shuffle_targets and targets is not None else None
    table = None
    if config.loss.prompt > 0:
        table = report_label_table(train_rows(config, cache), load_labels(), config.loss.prompt_labels,
                                   shuffle_seed=config.seed if config.loss.prompt_shuffle else None)
    return PairCollator(tokenizer, config.model.text.max_length, targets, config.loss.target, id_map=id_map,
                        report_labels=table, mirror=config.data.mirror_pairs, seed=config.seed, **args)


# Offsets the prompt-label control's permutation from the shuffled-targets control's (same seed otherwise).
PROMPT_SHUFFLE_SEED = 104729


def report_label_table(rows: list[dict[str, Any]], label_set: LabelSet, source: str = "labeler",
                       shuffle_seed: int | None = None, what: str = "prompt term: labels of") -> dict[str, np.ndarray]:
    """The prompt term's targets: each training report's labels, in ``label_set.names`` order.

    Args:
        rows: training rows with ``id``, ``report`` and (for ``source="dataset"``) ``labels`` (18, CT-RATE order).
        source: ``labeler`` reads every report with the rule labeler (uncertain mentions become NaN: left out
            by the loss); ``dataset`` takes the rows' label columns (NaN where unknown).
        shuffle_seed: the control: when set, every report gets another report's labels (a seeded
            permutation without fixed points).
        what: how the log line that counts them begins.

    Returns:
        id -> (len(label_set),) float32; NaN for a label the source does not know.
    """
    if source not in ("labeler", "dataset"):
        raise ValueError(f"loss.prompt_labels={source!r}: expected 'labeler' or 'dataset'")
    ids = [str(r["id"]) for r in rows]
    if source == "labeler":
        read = label_matrix([str(r.get("report", "")) for r in rows], uncertain_as=float("nan"))
        columns = label_names("ct")
    else:
        read = np.array([[np.nan if v is None else v for v in (r.get("labels") or [None] * len(CT_RATE_LABELS))]
                         for r in rows], dtype=np.float32).reshape(len(rows), len(CT_RATE_LABELS))
        columns = list(CT_RATE_LABELS)
    table = np.full((len(rows), len(label_set)), np.nan, dtype=np.float32)
    for j, name in enumerate(label_set.names):
        if name in columns:
            table[:, j] = read[:, columns.index(name)]
        else:
            log.warning("loss.prompt: label %r is not a %s column; the prompt term leaves it out", name, source)
    known = np.isfinite(table)
    log.info("%s %d reports from the %s, %.1f%% of entries known, %.1f%% of the "
             "known positive%s", what, len(rows), source, 100 * known.mean() if table.size else 0.0,
             100 * float(np.nanmean(table)) if known.any() else 0.0,
             "; shuffled across reports (control)" if shuffle_seed is not None else "")
    if shuffle_seed is not None:
        other = shuffled_id_map(ids, shuffle_seed + PROMPT_SHUFFLE_SEED)
        position = {i: k for k, i in enumerate(ids)}
        return {i: table[position[other[i]]] for i in ids}
    return {i: table[k] for k, i in enumerate(ids)}


def _check_spec(config: TrainConfig, spec: Any, cache: CacheIndex | None) -> None:
    """A cache that serves validation beside a shard set must hold volumes of the same grid."""
    if cache is not None and not config.data.val_shards and config.data.val_split:
        cache_shape = cache.input_shape
        if tuple(cache_shape) != tuple(spec.shape_zyx):
            raise ValueError(f"data.cache={config.data.cache} holds {cache_shape} volumes, data.shards="
                             f"{config.data.shards} {tuple(spec.shape_zyx)}: preprocess both with one spec")


def _val_loader(config: TrainConfig, tokenizer: Tokenizer, rt: Runtime, cache: CacheIndex | None) -> DataLoader | None:
    """This rank's validation share: from ``data.val_shards``, else the cache's ``val_split``, else none."""
    da = config.data
    if not da.val_split or not (da.val_shards or da.cache):
        if da.val_split and rt.main:
            log.info("no validation: data.shards is set without data.val_shards or data.cache")
        return None
    collate = PairCollator(tokenizer, config.model.text.max_length)
    if da.val_shards:
        val = build_shard_val(config, rt.rank, rt.world_size)
        n, where = len(val.members), da.val_shards
    else:
        full = CTCacheDataset(cache, split=da.val_split, augment=None, seed=config.seed)
        n, where = len(full), da.cache
        chosen = subset_indices(len(full), da.max_val, config.seed)
        val = Subset(full, chosen[rt.rank::rt.world_size])  # every rank embeds its share
    if n < 2:
        if rt.main:
            log.warning("%s: validation split %r has %d volumes; validation is skipped", where, da.val_split, n)
        return None
    return DataLoader(val, batch_size=da.batch_size, shuffle=False, num_workers=da.num_workers, collate_fn=collate)


def report_token_stats(tokenizer: Tokenizer, reports: list[str], max_length: int) -> dict[str, float]:
    """Token counts of the training reports against the report tower's ``max_length``.

    Returns:
        ``n``, ``max``, ``median``, ``p95``, ``max_length``, ``truncated`` (count) and ``truncated_fraction``.
    """
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
    t = data.targets.lookup(data.train_ids, config.loss.target)  # (N, Dt)
    mean = t.mean(0, keepdim=True).expand_as(t)
    return float(PairwiseKDLoss(config.loss.pkd_kind)(mean, t))


def resolve_text(config: TrainConfig) -> TrainConfig:
    """With ``text_init="teacher"``, the report tower's settings become the teacher's.

    A pretrained (``hf``) tower keeps the run's ``max_length`` up to its position embeddings: the
    expert reads short radiograph reports (and head-and-tail cuts of CT reports for retrieval) at its
    own budget, but the CT model must read whole CT reports.
    """
    if config.text_init == "pretrained":
        tower, _ = read_report_tower(config.text_dir)
        if tower.embed_dim != config.model.embed_dim:
            raise ValueError(f"text_dir={config.text_dir}: the tower projects into {tower.embed_dim} dimensions, "
                             f"model.embed_dim is {config.model.embed_dim}; pre-train it with that embed_dim")
        return dataclasses.replace(config, model=dataclasses.replace(config.model, text=tower.text))
    if config.text_init != "teacher":
        return config
    text = teacher_text_config(config.teacher_dir)  # settings only: the weights are read once, by build_model
    if text.kind == "hf":
        text = dataclasses.replace(text, max_length=min(config.model.text.max_length, _hf_positions(text.hf_path)))
    return dataclasses.replace(config, model=dataclasses.replace(config.model, text=text))


def _hf_positions(path: str | None) -> int:
    """``max_position_embeddings`` of a Hugging Face model folder (512 when its config does not say)."""
    try:
        return int(json.loads((Path(path or "") / "config.json").read_text()).get("max_position_embeddings", 512))
    except (OSError, ValueError):
        return 512


def resolve_config(config: TrainConfig, tokenizer: Tokenizer, targets: Any,
                   cache: CacheIndex | None = None) -> TrainConfig:
    """Fill what the data decides: input shape, vocabulary size, teacher width, MLM head."""
    m = config.model
    text = m.text
    if text.kind == "bert":
        text = dataclasses.replace(text, vocab_size=tokenizer.vocab_size)
    teacher_dim = None
    if targets is not None and config.loss.distils:
        teacher_dim = int(targets.dim)
    model = dataclasses.replace(m, text=text, teacher_dim=teacher_dim, mlm_head=config.loss.mlm > 0,
                                input_shape=tuple(m.input_shape) if m.input_shape else data_input_shape(config, cache))
    return dataclasses.replace(config, model=model)


def data_input_shape(config: TrainConfig, cache: CacheIndex | None = None) -> tuple[int, int, int]:
    """The (D, H, W) of the training volumes: the shard set's spec, or the cache's."""
    if config.data.shards:
        return tuple(read_index(config.data.shards)["spec"]["shape_zyx"])  # type: ignore[return-value]
    return cache.input_shape if cache is not None else tuple(read_spec(config.data.cache).shape_zyx)  # type: ignore


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
        load_pretrained(model.volume_encoder, config.model.pretrained)
    if config.encoder_init:
        load_encoder_weights(model.volume_encoder, config.encoder_init)
    if config.text_init == "teacher":
        _, state = teacher_text_tower(config.teacher_dir)
        init_text_from_teacher(model, state)
    if config.text_init == "pretrained":
        init_text_from_teacher(model, read_report_tower(config.text_dir)[1], f"the report tower {config.text_dir}")
    return model
