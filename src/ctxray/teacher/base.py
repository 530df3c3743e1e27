"""The interface every X-ray expert (teacher) implements, and the frozen-teacher behaviour.

A teacher maps chest radiographs and report texts into one shared space:

- ``encode_image(images)``: ``(B, 1, H, W)`` float32 in ``[0, 1]`` -> ``(B, Dt)``; images of another
  size are resized to ``image_size`` (bilinear, antialiased) inside the teacher.
- ``encode_text(texts)``: ``list[str]`` -> ``(B, Dt)``; tokenisation and truncation are the teacher's.

Outputs are not normalised; callers L2-normalise. A teacher returned by ``load_teacher`` is frozen:
every parameter has ``requires_grad=False``, it stays in eval mode even if ``.train()`` is called (so
dropout and batch-norm statistics never change), and its encoders run under ``torch.no_grad``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ctxray.utils.io import sha256_file

TEXT_TRUNCATION_RULE = (
    "Report text is Findings + Impression (ctxray.data.text.report_text). When its WordPiece tokens "
    "exceed the budget, the first half of the budget is kept from the start and the second half from "
    "the end (the Impression), with [CLS]/[SEP] counted in the budget."
)


class Teacher(nn.Module):
    """Base class of X-ray experts: a frozen image tower and text tower sharing one space.

    Subclasses implement ``_encode_image`` (images already at ``image_size``) and ``_encode_text``,
    and set ``embed_dim``, ``image_size`` (None for a text-only teacher) and ``name``.
    """

    embed_dim: int
    image_size: int | None
    name: str = "teacher"

    def __init__(self) -> None:
        super().__init__()
        self._frozen = False
        self._fingerprint: str | None = None

    # -- frozen behaviour -------------------------------------------------------------------
    def freeze(self) -> Teacher:
        """Turn off gradients for every parameter and lock the module in eval mode."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        return super().train(False)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> Teacher:
        """Like ``nn.Module.train``, except that a frozen teacher always stays in eval mode."""
        return super().train(False if self._frozen else mode)

    @property
    def has_image_tower(self) -> bool:
        return self.image_size is not None

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # -- encoders ---------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Embed radiographs.

        Args:
            images: float32 in [0, 1]; resized to ``image_size`` if needed.

        Returns:
            Unnormalised embeddings.

        Shape:
            images: (B, 1, H, W) -> (B, embed_dim)
        """
        if not self.has_image_tower:
            raise NotImplementedError(f"{self.name} is a text-only teacher: it has no image tower")
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"{self.name}.encode_image: expected (B, 1, H, W), got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        size = self.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        with torch.set_grad_enabled(not self._frozen and torch.is_grad_enabled()):
            return self._encode_image(images)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed report texts (see ``TEXT_TRUNCATION_RULE`` for long ones).

        Shape:
            texts: B strings -> (B, embed_dim)
        """
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        with torch.set_grad_enabled(not self._frozen and torch.is_grad_enabled()):
            return self._encode_text(list(texts))

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    # -- identity ---------------------------------------------------------------------------
    def fingerprint(self) -> str:
        """A hex digest that changes whenever the weights, tokenizer or settings change."""
        if self._fingerprint is None:
            self._fingerprint = self._compute_fingerprint()
        return self._fingerprint

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def fingerprint_files(paths: Sequence[Path], extra: dict | None = None) -> str:
    """SHA-256 over the bytes of ``paths`` (sorted by name) and a JSON of ``extra`` settings."""
    h = hashlib.sha256(json.dumps(extra or {}, sort_keys=True).encode())
    for p in sorted(paths, key=lambda q: q.name):
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def head_tail_truncate(input_ids: torch.Tensor, attention_mask: torch.Tensor, max_length: int,
                       pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut over-long tokenised texts to ``max_length`` keeping their start and end.

    Each row is ``[CLS] t_1 ... t_n [SEP]`` (padded). A row longer than ``max_length`` keeps
    ``[CLS]``, the first ``ceil(b/2)`` and the last ``floor(b/2)`` word pieces (``b = max_length - 2``)
    and ``[SEP]``.

    Shape:
        input_ids, attention_mask: (B, L) -> (B, min(L, max_length))
    """
    if max_length < 4:
        raise ValueError(f"max_length={max_length} is too small (need [CLS], [SEP] and 2 tokens)")
    lengths = attention_mask.sum(1).tolist()
    out_len = min(input_ids.shape[1], max_length)
    ids = torch.full((input_ids.shape[0], out_len), pad_id, dtype=input_ids.dtype)
    mask = torch.zeros((input_ids.shape[0], out_len), dtype=attention_mask.dtype)
    budget = max_length - 2
    head = (budget + 1) // 2
    for i, n in enumerate(lengths):
        row = input_ids[i, :n]
        if n > max_length:
            body = row[1:-1]
            row = torch.cat([row[:1], body[:head], body[len(body) - (budget - head):], row[-1:]])
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask
