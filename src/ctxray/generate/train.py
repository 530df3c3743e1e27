"""Training the report decoder on a frozen CT encoder; the generator folder it writes.

The CT encoder is frozen (a choice: the decoder then trains on feature maps computed once, which
keeps CPU runs short and makes the comparison of encoders clean). ``encoder_init="random"`` keeps the
checkpoint's architecture but re-initialises its weights (the random-encoder control).

Generator folder ``G`` (``ctxray generate train --out G``)::

    G/config.json          GenerateConfig + encoder description (name, kwargs, source checkpoint, init)
    G/model.safetensors    decoder weights
    G/encoder.safetensors  the frozen volume encoder's weights (G is self-contained)
    G/tokenizer/           the CT model's tokenizer
    G/spec.json            the cache's preprocessing spec (to run on new NIfTI/DICOM volumes)
    G/log.jsonl            one line per epoch: train loss, learning rate
    G/metrics.json, G/samples.jsonl   evaluation on the eval split (written by ``ctxray.generate.run``)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ctxray.config import from_dict, to_dict
from ctxray.generate.decoder import DecoderConfig, ReportDecoder, lm_loss
from ctxray.generate.search import DecodeConfig
from ctxray.models.registry import create_volume_encoder
from ctxray.models.text import Tokenizer
from ctxray.optim import lr_factor, param_groups
from ctxray.train.checkpoint import load_model
from ctxray.utils.io import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class GenerateConfig:
    """Report-generator training settings (stored in ``G/config.json``).

    Args:
        decoder: the decoder architecture.
        decode: how reports are decoded at evaluation and by ``generate run``.
        encoder_init: ``checkpoint`` (the trained CT encoder) or ``random`` (same architecture,
            re-initialised with ``seed``: the control).
        epochs, batch_size, lr, weight_decay, warmup_steps, clip_norm: AdamW with linear warm-up and
            cosine decay to 5% of ``lr``; weight decay on matrices only.
        seed: seeds decoder initialisation, dropout, data order (and a random encoder).
        train_split, eval_split: manifest splits.
        max_train, max_eval: keep the first N volumes of each split (None: all).
        feature_batch: volumes per encoder forward pass.
        label_set: the labeler's label set for clinical efficacy.
        device: ``auto`` uses CUDA when available.
    """

    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    encoder_init: Literal["checkpoint", "random"] = "checkpoint"
    epochs: int = 40
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    clip_norm: float = 1.0
    seed: int = 0
    train_split: str = "train"
    eval_split: str = "valid"
    max_train: int | None = None
    max_eval: int | None = None
    feature_batch: int = 4
    label_set: Literal["ct", "xray"] = "ct"
    device: Literal["auto", "cpu", "cuda"] = "auto"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_encoder(checkpoint: str | Path, init: str = "checkpoint", seed: int = 0) -> tuple[nn.Module, Any, dict]:
    """The CT volume encoder of a training run (frozen, eval mode) and its tokenizer.

    Returns:
        (volume encoder, Tokenizer, description ``{"name", "kwargs", "source", "init"}``).
    """
    model, tokenizer, train_cfg = load_model(checkpoint)
    mcfg = train_cfg.model
    kwargs = dict(mcfg.encoder_kwargs)
    if mcfg.input_shape is not None:
        kwargs["input_shape"] = [int(s) for s in mcfg.input_shape]
    if init == "checkpoint":
        encoder = model.volume_encoder
    elif init == "random":
        torch.manual_seed(seed)
        encoder = create_volume_encoder(mcfg.encoder, **kwargs)
    else:
        raise ValueError(f"encoder_init={init!r}: expected 'checkpoint' or 'random'")
    freeze(encoder)
    return encoder, tokenizer, {"name": mcfg.encoder, "kwargs": kwargs, "source": str(checkpoint), "init": init}


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def _schedule(step: int, total: int, warmup: int) -> float:
    """Warm-up (capped at a tenth of the run) and a cosine to 5% of the peak (:func:`ctxray.optim.lr_factor`)."""
    return lr_factor(step, total, min(warmup, max(total // 10, 1)), 0.05)


def train_decoder(decoder: ReportDecoder, features: torch.Tensor, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor, cfg: GenerateConfig) -> list[dict]:
    """Teacher-forced training of the decoder on precomputed encoder features.

    Args:
        features: pooled feature maps, one per report.
        input_ids, attention_mask: tokenised reports (begin token first, right-padded).

    Shape:
        features: (N, C, *grid); input_ids, attention_mask: (N, L)

    Returns:
        one log row per epoch (``epoch``, ``loss`` mean over the epoch, ``lr``).
    """
    if not (len(features) == len(input_ids) == len(attention_mask)) or len(features) == 0:
        raise ValueError(f"train_decoder: {len(features)} features vs {len(input_ids)} reports")
    device = next(decoder.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout
    n, bs = len(features), min(cfg.batch_size, len(features))
    per_epoch = math.ceil(n / bs)
    total = cfg.epochs * per_epoch
    opt = torch.optim.AdamW(param_groups(decoder, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, total, cfg.warmup_steps))
    decoder.train()
    rows = []
    for epoch in range(cfg.epochs):
        perm, losses = torch.randperm(n, generator=gen), []
        for b in range(per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            mask = attention_mask[idx]
            length = int(mask.sum(1).max())
            ids, mask = input_ids[idx, :length].to(device), mask[:, :length].to(device)
            logits = decoder(decoder.visual_tokens(features[idx].to(device)), ids, mask)
            loss = lm_loss(logits, ids, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_norm > 0:
                nn.utils.clip_grad_norm_(decoder.parameters(), cfg.clip_norm)
            opt.step()
            sched.step()
            losses.append(loss.item())
        rows.append({"epoch": epoch + 1, "loss": sum(losses) / len(losses), "lr": sched.get_last_lr()[0]})
        log.info("decoder epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, rows[-1]["loss"])
    decoder.eval()
    return rows


def tokenize_reports(tokenizer: Any, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reports to decoder inputs: ``[CLS] tokens [SEP]``, right-padded.

    Shape:
        -> input_ids, attention_mask: (N, L) with L <= max_length
    """
    enc = tokenizer(texts, max_length=max_length)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if not bool((ids[:, 0] == tokenizer.cls_id).all()):
        raise ValueError("the tokenizer does not start reports with [CLS]; a BERT-style tokenizer is required")
    return ids, mask


def save_generator(out: Path, decoder: ReportDecoder, encoder: nn.Module, encoder_desc: dict, tokenizer: Any,
                   cfg: GenerateConfig, spec_path: Path | None) -> None:
    """Write the generator folder (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(_untied_state(decoder), str(out / "model.safetensors"))
    save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()},
              str(out / "encoder.safetensors"))
    tokenizer.save(out / "tokenizer")
    if spec_path is not None and spec_path.is_file():
        shutil.copyfile(spec_path, out / "spec.json")
    config = {"generate": to_dict(cfg), "encoder": encoder_desc}
    atomic_write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True))


def _untied_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each shared tensor once (GPT-2 ties its output layer to the token embedding)."""
    seen: set[int] = set()
    out = {}
    for k, v in module.state_dict().items():
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v.detach().cpu().contiguous()
    return out


@dataclass
class Generator:
    """A loaded generator folder: frozen encoder, decoder, tokenizer, settings."""

    decoder: ReportDecoder
    encoder: nn.Module
    tokenizer: Any
    cfg: GenerateConfig
    encoder_desc: dict
    spec_path: Path | None


def load_generator(folder: str | Path, device: str = "cpu") -> Generator:
    """Rebuild a generator written by :func:`save_generator`.

    Raises:
        FileNotFoundError / ValueError: a file is missing or does not fit (the message names it).
    """
    root = Path(folder)
    for name in ("config.json", "model.safetensors", "encoder.safetensors", "tokenizer"):
        if not (root / name).exists():
            raise FileNotFoundError(f"{root / name}: missing; is {root} a generator folder (ctxray generate train)?")
    try:
        data = json.loads((root / "config.json").read_text())
        cfg = from_dict(GenerateConfig, data["generate"], f"{root / 'config.json'}:generate")
        desc = data["encoder"]
    except (json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{root / 'config.json'}: not a generator config: {err}") from err
    decoder = ReportDecoder(cfg.decoder)
    missing, unexpected = decoder.load_state_dict(load_file(str(root / "model.safetensors")), strict=False)
    missing = [k for k in missing if k not in set(decoder.state_dict()) - set(_untied_state(decoder))]
    if missing or unexpected:
        raise ValueError(f"{root / 'model.safetensors'}: does not fit the decoder config: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    encoder = create_volume_encoder(desc["name"], checkpoint=root / "encoder.safetensors", **desc["kwargs"])
    spec = root / "spec.json"
    tokenizer = Tokenizer.from_pretrained(root / "tokenizer")
    return Generator(decoder.to(device).eval(), freeze(encoder.to(device)), tokenizer, cfg, desc,
                     spec if spec.is_file() else None)
