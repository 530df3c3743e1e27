"""Pre-train the report tower on the training reports, before contrastive training (``ctxray pretrain-text``).

Zero-shot classification scores a volume by its cosine to a label's positive and negative prompt ensembles,
so it can be no better than the report tower's own reading of the reports: applied to the validation
*reports*, the prompts are the ceiling of image zero-shot. A scratch tower trained only against volumes
does not learn what the prompts mean: on the demo world it scored 0.82 macro AUROC, the same as an untrained
tower (0.825). This stage fits the tower to the prompts on report text alone: each training report's
zero-shot score (its cosine to the positive minus the negative ensemble, ``ctxray.losses.ReportPromptLoss``)
is fitted to the rule labeler's reading of that report (uncertain mentions left out). No volume and no
volume label is read; on CT-RATE the reports' labels are themselves the output of a text classifier.

The folder it writes (``config.json``, ``model.safetensors`` with ``text_encoder.*`` and ``text_proj.weight``,
``tokenizer/``, ``metrics.json``) starts a CT-model run: ``ctxray train --set text_init=pretrained
--set text_dir=T`` (the run takes the tower's settings, tokenizer and weights; ``optim.text_lr_scale``
then sets how far contrastive training may move it, 0 keeping it as pre-trained).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ctxray.config import to_dict
from ctxray.data.cachedir import read_cache
from ctxray.data.text import names_side, swap_sides
from ctxray.labels import load_labels
from ctxray.losses import ReportPromptLoss
from ctxray.metrics import auroc_per_label
from ctxray.models.text import TextEncoder, TextEncoderConfig, Tokenizer
from ctxray.models.zeroshot import encode_texts, ensemble_directions, prompt_embeddings, prompt_texts, zero_shot_logits
from ctxray.optim import lr_factor, param_groups
from ctxray.train.checkpoint import CONFIG_FILE, MODEL_FILE, TOKENIZER_DIR
from ctxray.train.config import ReportTowerConfig
from ctxray.train.setup import check_report_lengths, report_label_table, report_token_stats, train_tokenizer
from ctxray.utils.io import atomic_write_dir
from ctxray.utils.seed import seed_everything

log = logging.getLogger(__name__)


class ReportTower(nn.Module):
    """The report tower and its projection into the shared space, named as in ``DualEncoder``."""

    def __init__(self, text: TextEncoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.text_encoder = TextEncoder(text)
        self.text_proj = nn.Linear(self.text_encoder.width, embed_dim, bias=False)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised report embeddings, exactly as ``DualEncoder.encode_text``."""
        return F.normalize(self.text_proj(self.text_encoder(input_ids, attention_mask)), dim=-1)


def read_reports(tower: Any, tokenizer: Tokenizer, reports: list[str], y: np.ndarray,
                 max_length: int) -> dict[str, Any]:
    """How the tower reads ``reports`` (each encoded once): the zero-shot prompts' macro and per-label AUROC against
    ``y`` (N, L; NaN unknown), and ``side_cosine``, the mean cosine between each report that names a side and the
    same report with its sides swapped (1.0: the tower does not read sides; None when no report names a side).

    A label with one class among the known entries has no AUROC (None) and is left out of the macro (None when
    no label has one, e.g. validation reports without label columns).
    """
    labels = load_labels()
    emb = encode_texts(tower, tokenizer, reports, max_length=max_length)
    pos, neg = prompt_embeddings(tower, tokenizer, labels, max_length=max_length)
    scores = zero_shot_logits(emb, pos, neg, 1.0).numpy()
    per = np.full(len(labels), np.nan)
    for j in range(len(labels)):  # per label over its known entries
        known = np.isfinite(y[:, j])
        if known.any():
            per[j] = auroc_per_label(y[known][:, [j]], scores[known][:, [j]])[0]
    finite = per[np.isfinite(per)]
    sided = [i for i, r in enumerate(reports) if names_side(r)]
    side_cos = None
    if sided:
        swapped = encode_texts(tower, tokenizer, [swap_sides(reports[i]) for i in sided], max_length=max_length)
        side_cos = float((emb[sided] * swapped).sum(1).mean())
    return {"macro": float(finite.mean()) if finite.size else None,
            "per_label": {n: round(float(v), 4) if np.isfinite(v) else None for n, v in zip(labels.names, per)},
            "side_cosine": side_cos}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> list[torch.Tensor]:
    """``steps`` batches of report indices: epochs of seeded permutations cut into full batches (a split smaller
    than a batch gives whole-split batches). Sorting groups of batches by report length pads less (83 vs 119 s
    for the demo's 600 steps) but scored lower on the validation reports (0.931 / 0.938 at 600 / 800 steps
    against 0.953; demo world, session 8), so batches are random."""
    if n <= batch_size:
        return [torch.arange(n)] * steps
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=gen)
        out += [perm[k:k + batch_size] for k in range(0, n - batch_size + 1, batch_size)]
    return out[:steps]


def pretrain_report_tower(cache_dir: str | Path, out: str | Path, cfg: ReportTowerConfig) -> dict[str, Any]:
    """Fit a scratch report tower to the zero-shot prompts on the training reports; write the folder ``out``.

    Returns:
        The metrics written to ``out/metrics.json``: the prompts' macro AUROC on the training reports (against
        the labels it fitted) and on the validation reports (against the cache's labels) before and after,
        the loss at the start and end, steps and seconds.
    """
    cfg.check()
    cache = read_cache(cache_dir)
    rows = cache.split(cfg.train_split)
    if len(rows) < 2:
        raise ValueError(f"{cache_dir}: split {cfg.train_split!r} has {len(rows)} reports; pre-training needs >= 2")
    reports = [str(r.get("report", "")) for r in rows]
    label_set = load_labels()
    tokenizer = train_tokenizer(reports, cfg.tokenizer_vocab)
    tokens = report_token_stats(tokenizer, reports, cfg.text.max_length)
    check_report_lengths(tokens, cfg.max_truncated, str(cache_dir))
    table = report_label_table(rows, label_set, cfg.labels, what="report tower: fitting the labels of")
    y_train = np.stack([table[str(r["id"])] for r in rows])
    val_rows = cache.split(cfg.val_split) if cfg.val_split else []
    val_reports = [str(r.get("report", "")) for r in val_rows]
    y_val = report_label_table(val_rows, label_set, "dataset", what="report tower: scoring the labels of") \
        if val_rows else {}
    y_val_m = np.stack([y_val[str(r["id"])] for r in val_rows]) if val_rows else None

    seed_everything(cfg.seed)
    text = dataclasses.replace(cfg.text, vocab_size=tokenizer.vocab_size)
    cfg = dataclasses.replace(cfg, text=text)
    tower = ReportTower(text, cfg.embed_dim)
    params = [p for p in tower.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(tower, cfg.weight_decay), lr=cfg.lr)  # no decay on norms, biases
    texts, counts = prompt_texts(label_set)
    prompt_batch = tokenizer(texts, max_length=text.max_length)
    loss_fn = ReportPromptLoss(cfg.scale)
    order = torch.Generator().manual_seed(cfg.seed)
    y_t = torch.as_tensor(y_train)
    encoded = tokenizer(reports, max_length=text.max_length)  # once; each batch is cut to its longest report
    lengths = encoded["attention_mask"].sum(1)
    batches = _batches(len(reports), cfg.batch_size, cfg.steps, order)
    sided = torch.tensor([names_side(r) for r in reports])
    swapped = tokenizer([swap_sides(r) for r in reports], max_length=text.max_length) if cfg.sides > 0 else None

    def score() -> dict[str, Any]:
        result = {"train": read_reports(tower, tokenizer, reports, y_train, text.max_length)}
        if val_rows:
            result["valid"] = read_reports(tower, tokenizer, val_reports, y_val_m, text.max_length)
        return result

    before = score()
    log.info("report tower: %d training reports (%s labels), %d steps of %d; prompts on the reports before: "
             "train %s%s", len(reports), cfg.labels, cfg.steps, cfg.batch_size, _fmt(before["train"]["macro"]),
             f", valid {_fmt(before['valid']['macro'])}" if val_rows else "")
    losses: list[float] = []
    start = time.perf_counter()
    tower.train()
    for step in range(cfg.steps):
        idx = batches[step]
        width = int(lengths[idx].max())
        emb = tower.encode_text(encoded["input_ids"][idx, :width], encoded["attention_mask"][idx, :width])
        pos, neg = ensemble_directions(tower.encode_text(prompt_batch["input_ids"], prompt_batch["attention_mask"]),
                                       counts)
        loss = loss_fn(emb, pos, neg, y_t[idx])
        if swapped is not None and sided[idx].any():
            keep = idx[sided[idx]]
            other = tower.encode_text(swapped["input_ids"][keep, :width], swapped["attention_mask"][keep, :width])
            cos = (emb[sided[idx]] * other).sum(1)
            loss = loss + cfg.sides * F.relu(cos - cfg.side_margin).mean()
        for group in optimizer.param_groups:  # linear warm-up, then cosine to zero: the CT model's schedule
            group["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, min_ratio=0.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            recent = losses[-cfg.log_every:]
            log.info("report tower step %d/%d: prompt loss %.4f (mean of the last %d), %.0f s", step + 1, cfg.steps,
                     sum(recent) / len(recent), len(recent), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    after = score()
    head = losses[: min(10, len(losses))]
    tail = losses[-min(10, len(losses)):]
    metrics = {"steps": cfg.steps, "seconds": round(seconds, 1), "reports": len(reports),
               "loss_first10": sum(head) / len(head), "loss_last10": sum(tail) / len(tail),
               "prompts_on_reports": {"before": before, "after": after}, "report_tokens": tokens}
    log.info("report tower done in %.0f s: prompts on the training reports %s -> %s%s", seconds,
             _fmt(before["train"]["macro"]), _fmt(after["train"]["macro"]),
             f"; on the validation reports {_fmt(before['valid']['macro'])} -> {_fmt(after['valid']['macro'])}"
             if val_rows else "")
    log.info("report tower: a report vs the same report with left and right swapped, mean cosine %s -> %s on the "
             "training reports%s (1.0: sides not read%s)", _fmt(before["train"]["side_cosine"]),
             _fmt(after["train"]["side_cosine"]), f", {_fmt(before['valid']['side_cosine'])} -> "
             f"{_fmt(after['valid']['side_cosine'])} on the validation reports" if val_rows else "",
             "" if cfg.sides > 0 else "; sides=W trains them")

    def write(tmp: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in tower.state_dict().items()}, str(tmp / MODEL_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(to_dict(cfg), indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tokenizer.save(tmp / TOKENIZER_DIR)

    atomic_write_dir(Path(out), write)
    return metrics
