"""Report decoder: a small GPT-2 conditioned on the CT encoder's feature map.

The CT volume tower's feature map ``(B, C, d, h, w)`` is average-pooled to a fixed grid and
flattened to ``T`` visual tokens, normalised and projected to the decoder width, plus a learned
position per token. The decoder (``transformers.GPT2LMHeadModel`` built from a config, nothing
downloaded) reads them either through cross-attention in every block (``conditioning=
"cross_attention"``) or as a prefix before the report tokens (``"prefix"``). It returns logits;
the loss is :func:`lm_loss`. Decoding (greedy and beam search) lives in :mod:`ctxray.generate.search`.

Reports are tokenised with the CT model's WordPiece tokenizer; ``[CLS]`` serves as begin-of-report,
``[SEP]`` as end-of-report and ``[PAD]`` as padding.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderConfig:
    """Report decoder settings (stored with the decoder; enough to rebuild it).

    Args:
        layers, heads, width: GPT-2 depth, attention heads and width.
        max_length: longest report in tokens, counting begin and end tokens.
        dropout: residual, embedding and attention dropout.
        conditioning: ``cross_attention`` or ``prefix``.
        visual_grid: the feature map is average-pooled to this (d, h, w) grid: T = d*h*w tokens.
        visual_dim: channels C of the encoder's feature map (filled from the encoder).
        vocab_size, bos_id, eos_id, pad_id: from the tokenizer.
    """

    layers: int = 3
    heads: int = 4
    width: int = 256
    max_length: int = 400
    dropout: float = 0.1
    conditioning: Literal["cross_attention", "prefix"] = "cross_attention"
    visual_grid: tuple[int, int, int] = (2, 4, 4)
    visual_dim: int | None = None
    vocab_size: int | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    def check(self) -> None:
        """Raise ValueError naming the first unusable field."""
        for name in ("visual_dim", "vocab_size", "bos_id", "eos_id", "pad_id"):
            if getattr(self, name) is None:
                raise ValueError(f"DecoderConfig.{name} is not set (filled from the encoder / tokenizer)")
        if self.width % self.heads:
            raise ValueError(f"DecoderConfig: width {self.width} is not divisible by heads {self.heads}")
        if self.conditioning not in ("cross_attention", "prefix"):
            raise ValueError(f"DecoderConfig.conditioning={self.conditioning!r}: cross_attention or prefix")
        if len(self.visual_grid) != 3 or min(self.visual_grid) < 1:
            raise ValueError(f"DecoderConfig.visual_grid={self.visual_grid}: three positive sizes")
        if self.max_length < 3:
            raise ValueError(f"DecoderConfig.max_length={self.max_length}: at least 3 tokens")

    @property
    def visual_tokens(self) -> int:
        return math.prod(self.visual_grid)


def pool_feature_map(feature_map: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Average-pool a feature map to a fixed grid.

    Shape:
        feature_map: (B, C, d, h, w) -> (B, C, *grid)
    """
    if feature_map.ndim != 5:
        raise ValueError(f"expected a (B, C, d, h, w) feature map, got shape {tuple(feature_map.shape)}")
    return F.adaptive_avg_pool3d(feature_map, tuple(grid))


class ReportDecoder(nn.Module):
    """GPT-2 report decoder over pooled CT feature-map tokens.

    Args:
        cfg: a complete :class:`DecoderConfig` (see ``check``).
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg.check()
        self.cfg = cfg
        prefix = cfg.visual_tokens if cfg.conditioning == "prefix" else 0
        gpt_cfg = GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.max_length + prefix, n_embd=cfg.width, n_layer=cfg.layers,
            n_head=cfg.heads, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            add_cross_attention=cfg.conditioning == "cross_attention", bos_token_id=cfg.bos_id,
            eos_token_id=cfg.eos_id, pad_token_id=cfg.pad_id, use_cache=False, tie_word_embeddings=True,
        )
        self.gpt = GPT2LMHeadModel(gpt_cfg)
        self.visual_norm = nn.LayerNorm(cfg.visual_dim)
        self.visual_proj = nn.Linear(cfg.visual_dim, cfg.width)
        self.visual_pos = nn.Parameter(torch.randn(cfg.visual_tokens, cfg.width) * 0.02)

    def visual_tokens(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Decoder-width visual tokens from an encoder feature map (pooled here if needed).

        Shape:
            feature_map: (B, C, d, h, w) -> (B, T, width)
        """
        pooled = pool_feature_map(feature_map, self.cfg.visual_grid)  # (B, C, gd, gh, gw)
        tokens = pooled.flatten(2).transpose(1, 2)  # (B, T, C)
        return self.visual_proj(self.visual_norm(tokens)) + self.visual_pos

    def forward(self, visual: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token logits of reports given visual tokens.

        Args:
            visual: output of :meth:`visual_tokens`.
            input_ids: reports starting with ``bos_id``.
            attention_mask: 1 for real tokens, 0 for padding (right-padded); None: all real.

        Shape:
            visual: (B, T, width); input_ids, attention_mask: (B, L) -> logits (B, L, vocab)
        """
        if input_ids.shape[1] > self.cfg.max_length:
            raise ValueError(f"{input_ids.shape[1]} tokens exceed DecoderConfig.max_length={self.cfg.max_length}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.cfg.conditioning == "cross_attention":
            out = self.gpt(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=visual,
                           use_cache=False)
            return out.logits
        embeds = torch.cat([visual, self.gpt.transformer.wte(input_ids)], dim=1)  # (B, T+L, width)
        mask = torch.cat([attention_mask.new_ones(visual.shape[:2]), attention_mask], dim=1)
        out = self.gpt(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        return out.logits[:, visual.shape[1]:]  # (B, L, vocab)

    @torch.no_grad()
    def start(self, visual: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Begin incremental decoding: logits after ``input_ids`` and the key/value cache.

        Shape:
            visual: (B, T, width); input_ids: (B, t) -> logits (B, vocab)
        """
        if self.cfg.conditioning == "cross_attention":
            out = self.gpt(input_ids=input_ids, encoder_hidden_states=visual, use_cache=True)
        else:
            embeds = torch.cat([visual, self.gpt.transformer.wte(input_ids)], dim=1)
            out = self.gpt(inputs_embeds=embeds, use_cache=True)
        return out.logits[:, -1], _cache_of(out)

    @torch.no_grad()
    def step(self, visual: torch.Tensor, token: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """One incremental decoding step.

        Shape:
            visual: (B, T, width); token: (B, 1) -> logits (B, vocab)
        """
        extra = {"encoder_hidden_states": visual} if self.cfg.conditioning == "cross_attention" else {}
        out = self.gpt(input_ids=token, use_cache=True, **{_cache_arg(): cache}, **extra)
        return out.logits[:, -1], _cache_of(out)


@lru_cache(maxsize=1)
def _cache_arg() -> str:
    """The name transformers' GPT-2 uses for the key/value cache (``cache``; older: ``past_key_values``)."""
    from transformers import GPT2LMHeadModel

    return "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"


def _cache_of(out: Any) -> Any:
    return out["cache"] if "cache" in out else out["past_key_values"]


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from tokens <= t, padding ignored.

    Shape:
        logits: (B, L, V); input_ids, attention_mask: (B, L) -> scalar
    """
    target = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
