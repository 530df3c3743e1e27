"""The CT-report dual encoder: a 3D volume tower and a report tower in one shared space.

Two linear projections map the pooled volume feature and the pooled report feature into an
``embed_dim`` space where both are L2-normalised; a learnable temperature scales their cosines.
A KD head maps the pooled volume feature to the X-ray teacher's width (pair-wise and relation
distillation), and an optional MLM head predicts masked report tokens.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from ctxray.config import from_dict
from ctxray.models.registry import create_volume_encoder
from ctxray.models.text import TextEncoder, TextEncoderConfig

log = logging.getLogger(__name__)


@dataclass
class DualEncoderConfig:
    """Dual-encoder settings (everything needed to rebuild the model from a checkpoint).

    Args:
        encoder: a volume encoder name from ``ctxray.models.registry.list_encoders()``.
        encoder_kwargs: extra keyword arguments for it (e.g. ``grad_checkpointing: true``, ``freeze_stages: 2``).
        pretrained: published volume-encoder weights to start a run from (``astra`` for ``i3resnet_152``; see
            ``ctxray.models.i3resnet.PRETRAINED``); applied when training starts, not when a checkpoint loads.
        input_shape: (D, H, W) of the model input; filled from the cache's spec when None.
        embed_dim: width E of the shared space.
        teacher_dim: the teacher's width Dt; filled from the retrieval targets; None: no KD head.
        kd_head: ``linear`` or ``mlp`` (one hidden GELU layer).
        kd_from: what the KD head reads: ``embedding``, the shared volume embedding (so what distillation
            teaches must live in the space that zero-shot and retrieval use), or ``feature``, the pooled
            volume feature (a parallel branch: a free head can absorb the targets without changing the
            shared space).
        text: the report tower (``vocab_size`` is filled from the tokenizer).
        mlm_head: add a masked-language-modelling head on the report tower.
        logit_scale_init: initial log temperature multiplier (log(1/0.07), CLIP's).
        logit_scale_max: the log multiplier is clamped to [0, this] (log 100).
    """

    encoder: str = "vit3d_small"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    input_shape: tuple[int, int, int] | None = None
    embed_dim: int = 256
    teacher_dim: int | None = None
    kd_head: Literal["linear", "mlp"] = "linear"
    kd_from: Literal["embedding", "feature"] = "embedding"
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    mlm_head: bool = False
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = math.log(100.0)


class MLMHead(nn.Module):
    """BERT-style prediction head: dense + GELU + LayerNorm, then a vocabulary projection.

    Shape:
        states: (B, L, width) -> (B, L, vocab)
    """

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(states))))


def _kd_head(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim))
    raise ValueError(f"DualEncoderConfig.kd_head={kind!r}: expected 'linear' or 'mlp'")


class DualEncoder(nn.Module):
    """CT volume + report encoders with projections, temperature, KD and optional MLM heads.

    Args:
        cfg: the model config; ``cfg.text.vocab_size`` must be set for ``kind="bert"``.
    """

    def __init__(self, cfg: DualEncoderConfig) -> None:
        super().__init__()
        if cfg.embed_dim < 1:
            raise ValueError(f"DualEncoderConfig.embed_dim={cfg.embed_dim}: must be positive")
        self.cfg = cfg
        kwargs = dict(cfg.encoder_kwargs)
        if cfg.input_shape is not None:
            kwargs["input_shape"] = tuple(int(s) for s in cfg.input_shape)
        self.volume_encoder = create_volume_encoder(cfg.encoder, **kwargs)
        self.text_encoder = TextEncoder(cfg.text)
        width = self.text_encoder.width
        self.volume_proj = nn.Linear(self.volume_encoder.out_dim, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        if cfg.kd_from not in ("embedding", "feature"):
            raise ValueError(f"DualEncoderConfig.kd_from={cfg.kd_from!r}: expected 'embedding' or 'feature'")
        kd_in = cfg.embed_dim if cfg.kd_from == "embedding" else self.volume_encoder.out_dim
        self.kd_head = _kd_head(cfg.kd_head, kd_in, cfg.teacher_dim) if cfg.teacher_dim else None
        vocab = int(self.text_encoder.backbone.config.vocab_size)
        self.mlm_head = MLMHead(width, vocab) if cfg.mlm_head else None

    def scale(self) -> torch.Tensor:
        """The exponentiated, clamped temperature multiplier (a scalar)."""
        return self.logit_scale.clamp(0.0, self.cfg.logit_scale_max).exp()

    def encode_volume(self, volume: torch.Tensor) -> torch.Tensor:
        """L2-normalised volume embeddings.

        Shape:
            volume: (B, 1, D, H, W) float32 in [0, 1] -> (B, E)
        """
        return F.normalize(self.volume_proj(self.volume_encoder(volume)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised report embeddings.

        Shape:
            input_ids, attention_mask: (B, L) -> (B, E)
        """
        return F.normalize(self.text_proj(self.text_encoder(input_ids, attention_mask)), dim=-1)

    def volume_feature_map(self, volume: torch.Tensor) -> torch.Tensor:
        """The volume tower's spatial features (heatmaps, report decoder).

        Shape:
            volume: (B, 1, D, H, W) -> (B, C, d, h, w)
        """
        return self.volume_encoder.feature_map(volume)

    def forward(self, volume: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                mlm_input_ids: torch.Tensor | None = None, prompt_input_ids: torch.Tensor | None = None,
                prompt_attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Embeddings for a batch of CT-report pairs.

        Args:
            mlm_input_ids: the same reports with tokens masked; when given (and the model has an MLM
                head) the output also holds ``mlm_logits``.
            prompt_input_ids, prompt_attention_mask: (P, Lp) tokenised zero-shot prompts; when given the
                output also holds their embeddings ``prompts`` (through this forward, so DDP sees them).

        Returns:
            ``volume`` (B, E), ``text`` (B, E) normalised; ``kd`` (B, Dt) normalised when the model
            has a KD head; ``logit_scale`` (scalar, exponentiated); ``mlm_logits`` (B, L, vocab);
            ``prompts`` (P, E) normalised.
        """
        feat = self.volume_encoder(volume)  # (B, C)
        vol = F.normalize(self.volume_proj(feat), dim=-1)  # (B, E)
        out = {"volume": vol, "text": self.encode_text(input_ids, attention_mask), "logit_scale": self.scale()}
        if self.kd_head is not None:
            out["kd"] = F.normalize(self.kd_head(vol if self.cfg.kd_from == "embedding" else feat), dim=-1)
        if mlm_input_ids is not None:
            if self.mlm_head is None:
                raise ValueError("mlm_input_ids given but the model has no MLM head (DualEncoderConfig.mlm_head)")
            states = self.text_encoder.token_states(mlm_input_ids, attention_mask)  # (B, L, width)
            out["mlm_logits"] = self.mlm_head(states)
        if prompt_input_ids is not None:
            if prompt_attention_mask is None:
                raise ValueError("prompt_input_ids given without prompt_attention_mask")
            out["prompts"] = self.encode_text(prompt_input_ids, prompt_attention_mask)
        return out


def teacher_text_config(teacher_dir: str | Path) -> TextEncoderConfig:
    """The X-ray expert's text-tower settings from a built-in teacher folder's ``config.json`` (no weights read).

    A pretrained tower (``kind="hf"``) comes back pointing at its folder by absolute path.

    Raises:
        FileNotFoundError: no ``config.json`` (or no tower folder for ``kind="hf"``). ValueError: no readable
            ``text`` section.
    """
    root = Path(teacher_dir)
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not found; is {root} a teacher folder (ctxray teacher train)?")
    try:
        data = json.loads(cfg_path.read_text())
        text_cfg = from_dict(TextEncoderConfig, data["text"], f"{cfg_path}:text")
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{cfg_path}: no readable 'text' section (a TextEncoderConfig): {err}") from err
    if text_cfg.kind == "hf":
        backbone = root / (text_cfg.hf_path or "")
        if not text_cfg.hf_path or not backbone.is_dir():
            raise FileNotFoundError(f"{cfg_path}: text tower folder {text_cfg.hf_path!r} not found under {root}")
        return replace(text_cfg, hf_path=str(backbone.resolve()))
    return text_cfg


def teacher_text_tower(teacher_dir: str | Path) -> tuple[TextEncoderConfig, dict[str, torch.Tensor]]:
    """The X-ray expert's text tower: its config and weights, read from a built-in teacher folder.

    The folder is the one ``ctxray teacher train`` writes (``ctxray.teacher.builtin.save_builtin``):
    ``config.json`` with a ``text`` section (a ``TextEncoderConfig``), ``model.safetensors`` whose
    text-tower tensors carry the ``text_encoder.`` prefix and its projection ``text_proj.weight``,
    and the tokenizer in ``tokenizer/``. A pretrained tower (``kind="hf"``, e.g. the default locked
    MiniLM) is saved as its own Hugging Face folder instead (``hf_path``, relative to the teacher folder):
    the returned config then points at that folder by its absolute path, so ``DualEncoder`` loads the
    tower's weights from it, and the state holds the projection only.

    Returns:
        (text config, state dict with ``text_encoder.*`` keys (none for ``kind="hf"``) and, if present,
        ``text_proj.weight``; the same names as in ``DualEncoder``).
    """
    root = Path(teacher_dir)
    weights = root / "model.safetensors"
    text_cfg = teacher_text_config(root)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: not found; is {root} a teacher folder (ctxray teacher train)?")
    keep = ("text_encoder.", "text_proj.")
    state = {k: v for k, v in load_file(str(weights)).items() if k.startswith(keep)}
    if text_cfg.kind != "hf" and not any(k.startswith("text_encoder.") for k in state):
        raise ValueError(f"{weights}: no 'text_encoder.*' tensors (the teacher's text tower)")
    return text_cfg, state


def init_text_from_teacher(model: DualEncoder, state: dict[str, torch.Tensor], source: str = "the teacher") -> None:
    """Copy the teacher's text tower (and its projection when the widths agree) into ``model``.

    Args:
        source: where ``state`` came from, for the log (the teacher, or a pre-trained report tower).

    Raises:
        ValueError: when the tower's tensors do not match the model's text encoder exactly.
    """
    tower = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    if not tower and model.cfg.text.kind == "hf":  # a pretrained tower: its weights came from its own folder
        _copy_projection(model, state, f"from {model.cfg.text.hf_path}", source)
        return
    try:
        missing, unexpected = model.text_encoder.load_state_dict(tower, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"teacher text tower does not fit the model's: {err}") from err
    if missing or unexpected:
        raise ValueError(f"teacher text tower does not fit the model's: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    _copy_projection(model, state, f"{len(tower)} tensors", source)


def _copy_projection(model: DualEncoder, state: dict[str, torch.Tensor], tower: str, source: str) -> None:
    proj = state.get("text_proj.weight")
    if proj is not None and proj.shape == model.text_proj.weight.shape:
        with torch.no_grad():
            model.text_proj.weight.copy_(proj)
        log.info("text tower (%s) and projection initialised from %s", tower, source)
    else:
        log.info("text tower (%s) initialised from %s; projection kept random "
                 "(embed_dim differs from its)", tower, source)
