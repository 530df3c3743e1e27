"""Adapters that load real X-ray experts from local Hugging Face folders (nothing is downloaded).

- ``HFClipTeacher``: a CLIP-style folder (``config.json`` of a model with ``get_image_features`` and
  ``get_text_features``, e.g. ``CLIPModel`` saved by ``save_pretrained``; its tokenizer files and,
  optionally, ``preprocessor_config.json``), as CheXzero- or BioViL-like experts are shared.
- ``HFTextTeacher``: a text-only folder (``AutoModel`` + ``AutoTokenizer``, e.g. CXR-BERT or
  all-MiniLM-L6-v2), mean-pooled over tokens; usable for the retrieval step only (no image tower).

Image preprocessing of ``HFClipTeacher``: the ``(B, 1, H, W)`` [0, 1] radiograph is resized to the
vision tower's ``image_size`` (square; bilinear, antialiased), repeated to 3 channels and
normalised with ``image_mean``/``image_std`` from ``preprocessor_config.json`` (OpenAI CLIP's values
when the file is absent). Text: the folder's tokenizer, truncated to the tower's position budget
(head + tail for BERT-style tokenizers with [CLS]/[SEP], plain head truncation otherwise).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ctxray.teacher.base import Teacher, fingerprint_files, head_tail_truncate

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def _folder_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)


def _features(out: object) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers < 5) or an output with ``pooler_output``."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected feature output {type(out).__name__}")
    return pooled


def _tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise a batch, head+tail truncated when the tokenizer has [CLS]/[SEP], else head-truncated."""
    head_tail = tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None
    enc = tokenizer(texts, padding="longest", truncation=True, return_tensors="pt",
                    max_length=(1 << 16) if head_tail else max_length)
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    if head_tail:
        ids, mask = head_tail_truncate(ids, mask, max_length, int(tokenizer.pad_token_id or 0))
    return {"input_ids": ids, "attention_mask": mask}


def _load_model(path: Path):
    from transformers import AutoModel

    try:
        return AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot load a model from this folder: {err}") from err


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot load the tokenizer of this folder: {err}") from err


class HFClipTeacher(Teacher):
    """A CLIP-style Hugging Face folder (vision + text towers) as a teacher.

    Args:
        path: the local folder written by ``save_pretrained`` (model and tokenizer).
        batch_size: texts per forward pass.
    """

    name = "hf-clip"

    def __init__(self, path: str | Path, batch_size: int = 128) -> None:
        super().__init__()
        self.path = Path(path)
        self.model = _load_model(self.path)
        if not (hasattr(self.model, "get_image_features") and hasattr(self.model, "get_text_features")):
            raise ValueError(f"{self.path}: {type(self.model).__name__} is not CLIP-style "
                             "(no get_image_features/get_text_features); use a text-only teacher")
        self.tokenizer = _load_tokenizer(self.path)
        cfg = self.model.config
        self.image_size = int(cfg.vision_config.image_size)
        self.embed_dim = int(getattr(cfg, "projection_dim", None) or cfg.text_config.hidden_size)
        budget = int(getattr(cfg.text_config, "max_position_embeddings", 77))
        self.max_length = min(budget, int(getattr(self.tokenizer, "model_max_length", budget) or budget))
        mean, std = self._normalisation()
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.batch_size = batch_size

    def _normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        pre = self.path / "preprocessor_config.json"
        if not pre.is_file():
            return CLIP_MEAN, CLIP_STD
        try:
            data = json.loads(pre.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{pre}: not valid JSON: {err}") from err
        mean, std = data.get("image_mean", CLIP_MEAN), data.get("image_std", CLIP_STD)
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.expand(-1, 3, -1, -1) - self.pixel_mean) / self.pixel_std  # (B, 3, S, S)
        return _features(self.model.get_image_features(pixel_values=pixels))

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = _tokenize(self.tokenizer, texts[start:start + self.batch_size], self.max_length)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            out.append(_features(self.model.get_text_features(**enc)))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def _compute_fingerprint(self) -> str:
        return fingerprint_files(_folder_files(self.path), {"kind": self.name, "max_length": self.max_length})


class HFTextTeacher(Teacher):
    """A text-only Hugging Face folder (``AutoModel`` + ``AutoTokenizer``), mean-pooled.

    Args:
        path: the local model folder.
        max_length: token budget (capped by the model's position embeddings).
        batch_size: texts per forward pass.
    """

    name = "hf-text"
    image_size = None

    def __init__(self, path: str | Path, max_length: int = 256, batch_size: int = 128) -> None:
        super().__init__()
        self.path = Path(path)
        self.model = _load_model(self.path)
        self.tokenizer = _load_tokenizer(self.path)
        self.embed_dim = int(self.model.config.hidden_size)
        budget = int(getattr(self.model.config, "max_position_embeddings", max_length))
        self.max_length = min(max_length, budget)
        self.batch_size = batch_size

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = _tokenize(self.tokenizer, texts[start:start + self.batch_size], self.max_length)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            states = self.model(**enc).last_hidden_state  # (B, L, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, L, 1)
            out.append((states * mask).sum(1) / mask.sum(1).clamp_min(1.0))
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    def _compute_fingerprint(self) -> str:
        return fingerprint_files(_folder_files(self.path), {"kind": self.name, "max_length": self.max_length})
