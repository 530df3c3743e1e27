"""The built-in X-ray expert: a 2D CNN image tower and a small BERT text tower trained CLIP-style.

``XrayCLIP`` is the trainable module (features in, features out; the loss lives in
``ctxray.teacher.train``). ``BuiltinTeacher`` wraps a trained one with its tokenizer behind the
``Teacher`` interface. A teacher folder holds ``model.safetensors``, ``config.json`` (an
``XrayCLIPConfig`` plus ``"ctxray_teacher": "builtin"``), ``tokenizer/`` and ``metrics.json``; with a locked
pretrained text tower also ``text_backbone/`` and ``text_features.safetensors`` (:func:`save_text_memo`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ctxray.config import from_dict, to_dict
from ctxray.models.text import TextEncoder, TextEncoderConfig, Tokenizer
from ctxray.teacher.base import Teacher, fingerprint_files, head_tail_truncate
from ctxray.teacher.image import ImageEncoderConfig, XrayImageEncoder
from ctxray.utils.io import atomic_write, atomic_write_text

KIND_KEY = "ctxray_teacher"
TEXT_BACKBONE = "text_backbone"
TEXT_MEMO = "text_features.safetensors"

log = logging.getLogger(__name__)


def _default_text() -> TextEncoderConfig:
    return TextEncoderConfig(kind="bert", hidden=128, layers=2, heads=4, max_length=512, pooling="mean", dropout=0.1)


@dataclass
class XrayCLIPConfig:
    """Architecture of the built-in teacher.

    Args:
        image: the CNN image tower.
        text: the BERT text tower (``vocab_size`` is set from the tokenizer).
        embed_dim: width of the shared space (``Dt``).
        image_size: square input size the image tower is trained at.
        init_temperature: initial softmax temperature (the learnable logit scale starts at its inverse).
        lock_text: keep the text backbone frozen (a pretrained ``hf`` tower, e.g. MiniLM): only the text
            projection and the image tower learn ("locked text" tuning).
        label_names: labels of a supervised multi-label head on the image tower (trained with
            ``TeacherTrainConfig.label_weight``; real chest X-ray experts are trained on labels too); empty:
            no head. The head shapes the image features; the teacher's outputs stay the CLIP embeddings.
    """

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=_default_text)
    embed_dim: int = 256
    image_size: int = 128
    init_temperature: float = 0.07
    lock_text: bool = False
    label_names: list[str] = field(default_factory=list)


class XrayCLIP(nn.Module):
    """Image and text towers with linear projections into a shared ``embed_dim`` space.

    Args:
        cfg: architecture; ``cfg.text.vocab_size`` must be set.
    """

    def __init__(self, cfg: XrayCLIPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_encoder = XrayImageEncoder(cfg.image)
        self.text_encoder = TextEncoder(cfg.text)
        self.image_proj = nn.Linear(self.image_encoder.width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(self.text_encoder.width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.label_head = nn.Linear(self.image_encoder.width, len(cfg.label_names)) if cfg.label_names else None
        if cfg.lock_text:
            self.text_encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> XrayCLIP:
        super().train(mode)
        if self.cfg.lock_text:
            self.text_encoder.eval()  # a locked backbone never uses dropout
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Shape: (B, 1, H, W) in [0, 1] -> (B, embed_dim), unnormalised."""
        return self.image_proj(self.image_encoder(images))

    def image_and_label_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image embedding (unnormalised) and the supervised head's logits from one pass.

        Shape: (B, 1, H, W) -> (B, embed_dim), (B, len(label_names))
        """
        if self.label_head is None:
            raise ValueError("this teacher has no label head (XrayCLIPConfig.label_names is empty)")
        feat = self.image_encoder(images)
        return self.image_proj(feat), self.label_head(feat)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Shape: (B, L) ids and mask -> (B, embed_dim), unnormalised."""
        return self.text_proj(self.text_encoder(input_ids, attention_mask))

    def scale(self) -> torch.Tensor:
        """The clamped, exponentiated logit scale (at most 100)."""
        return self.logit_scale.clamp(0, math.log(100.0)).exp()

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised features of both towers and the clamped, exponentiated logit scale.

        Shape:
            returns image (B, E), text (B, E), logit_scale ()
        """
        return {
            "image": F.normalize(self.encode_image(images), dim=-1),
            "text": F.normalize(self.encode_text(input_ids, attention_mask), dim=-1),
            "logit_scale": self.scale(),
        }


def tokenize_reports(tokenizer: Tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise with the head+tail truncation rule of ``ctxray.teacher.base.TEXT_TRUNCATION_RULE``.

    Shape:
        returns input_ids, attention_mask: (B, <= max_length)
    """
    enc = tokenizer(texts, max_length=1 << 16)
    ids, mask = head_tail_truncate(enc["input_ids"], enc["attention_mask"], max_length, tokenizer.pad_id)
    return {"input_ids": ids, "attention_mask": mask}


def save_builtin(model: XrayCLIP, tokenizer: Tokenizer, out: str | Path) -> None:
    """Write a teacher folder: ``model.safetensors``, ``config.json``, ``tokenizer/``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    cfg = to_dict(model.cfg)
    if model.cfg.text.kind == "hf":  # the pretrained backbone goes to its own HF folder
        model.text_encoder.backbone.save_pretrained(out / TEXT_BACKBONE)
        state = {k: v for k, v in state.items() if not k.startswith("text_encoder.")}
        cfg["text"]["hf_path"] = TEXT_BACKBONE
    atomic_write(out / "model.safetensors", lambda p: save_file(state, str(p)))
    tokenizer.save(out / "tokenizer")
    atomic_write_text(out / "config.json", json.dumps({KIND_KEY: "builtin", **cfg}, indent=2))


def load_builtin_model(path: str | Path) -> tuple[XrayCLIP, Tokenizer]:
    """Rebuild an ``XrayCLIP`` and its tokenizer from a teacher folder (strict weight loading)."""
    path = Path(path)
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path / 'config.json'}: cannot read the teacher config: {err}") from err
    data.pop(KIND_KEY, None)
    cfg = from_dict(XrayCLIPConfig, data, str(path / "config.json"))
    if cfg.text.kind == "hf":
        cfg.text = replace(cfg.text, hf_path=str(path / TEXT_BACKBONE))
    tokenizer = Tokenizer.from_pretrained(path / "tokenizer")
    model = XrayCLIP(cfg)
    try:
        missing, unexpected = model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    except (OSError, RuntimeError) as err:
        raise ValueError(f"{path / 'model.safetensors'}: weights do not fit the config: {err}") from err
    allowed = cfg.text.kind == "hf"
    missing = [k for k in missing if not (allowed and k.startswith("text_encoder."))]
    if missing or unexpected:
        raise ValueError(f"{path / 'model.safetensors'}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model, tokenizer


def text_digest(text: str) -> str:
    """Key of a text in the memo (its SHA-256: the memo holds no report text)."""
    return hashlib.sha256(text.encode()).hexdigest()


def _backbone_files(folder: Path) -> list[Path]:
    """The files a locked text backbone's weights live in: its own folder (a pretrained tower), else the weights."""
    files = sorted((folder / TEXT_BACKBONE).glob("*"))
    return files or [folder / "model.safetensors"]


def save_text_memo(out: str | Path, texts: list[str], features: torch.Tensor, max_length: int) -> None:
    """Keep a locked text backbone's outputs for ``texts`` in the teacher folder (``text_features.safetensors``).

    The teacher trains on them anyway (a locked backbone is run once per distinct report); kept, they spare
    :class:`BuiltinTeacher` running the backbone again on the same reports (retrieval embeds the gallery's: on the
    demo world 2,119 of its ~2,560 distinct reports, ~20 s of two CPU cores). Keyed by each text's SHA-256, with
    the hash of the backbone's files: a folder whose backbone was replaced ignores the memo.

    Args:
        max_length: the tokenizer length the features were computed at (the teacher's ``text.max_length``).

    Shape:
        features: (len(texts), text width), the pooled backbone outputs (before ``text_proj``)
    """
    out = Path(out)
    if len(texts) != len(features):
        raise ValueError(f"text memo: {len(texts)} texts but {len(features)} feature rows")
    meta = {"digests": json.dumps([text_digest(t) for t in texts]),
            "backbone": fingerprint_files(_backbone_files(out)),
            "max_length": json.dumps(int(max_length))}
    atomic_write(out / TEXT_MEMO, lambda p: save_file({"features": features.detach().float().contiguous()}, str(p),
                                                     metadata=meta))


def load_text_memo(folder: Path, cfg: XrayCLIPConfig) -> tuple[dict[str, int], torch.Tensor] | None:
    """The memo of :func:`save_text_memo` (digest -> row, features), or None when the folder has none or when it
    does not belong to this backbone (logged)."""
    path = folder / TEXT_MEMO
    if not path.is_file() or not cfg.lock_text:
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            features = f.get_tensor("features")
    except Exception as err:  # safetensors raises its own error types for a damaged file
        raise ValueError(f"{path}: cannot read the text memo ({err}); delete it to encode texts afresh") from err
    if "digests" not in meta or meta.get("backbone") != fingerprint_files(_backbone_files(folder)) or \
            meta.get("max_length") != json.dumps(cfg.text.max_length):
        log.warning("%s: recorded for another text backbone or length; ignored (texts are encoded afresh)", path)
        return None
    digests = json.loads(meta["digests"])
    if len(digests) != len(features):
        raise ValueError(f"{path}: {len(digests)} digests but {len(features)} feature rows")
    return {d: i for i, d in enumerate(digests)}, features


class BuiltinTeacher(Teacher):
    """A trained ``XrayCLIP`` behind the ``Teacher`` interface.

    Args:
        model: the two towers.
        tokenizer: its WordPiece tokenizer.
        files: files whose bytes define the teacher (for the fingerprint); None hashes the weights.
        batch_size: texts per forward pass in ``encode_text``.
    """

    name = "builtin"

    def __init__(self, model: XrayCLIP, tokenizer: Tokenizer, files: list[Path] | None = None,
                 batch_size: int = 256, memo: tuple[dict[str, int], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.memo = memo
        self.embed_dim = model.cfg.embed_dim
        self.image_size = model.cfg.image_size
        self.max_length = model.cfg.text.max_length
        self.batch_size = batch_size
        self._files = files

    @classmethod
    def from_folder(cls, path: str | Path) -> BuiltinTeacher:
        path = Path(path)
        model, tok = load_builtin_model(path)
        files = [path / "model.safetensors", path / "config.json", *sorted((path / "tokenizer").glob("*")),
                 *sorted((path / TEXT_BACKBONE).glob("*"))]
        return cls(model, tok, files=files, memo=load_text_memo(path, model.cfg))

    def _encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def _encode_text(self, texts: list[str]) -> torch.Tensor:
        if self.memo is None or not texts:
            return self._encode_text_fresh(texts)
        rows, features = self.memo
        found = [rows.get(text_digest(t)) for t in texts]
        known = [i for i, r in enumerate(found) if r is not None]
        fresh = [i for i, r in enumerate(found) if r is None]
        out = torch.empty(len(texts), self.embed_dim, device=self.device)
        if known:  # the locked backbone's kept outputs through the (trained) projection: encode_text's function
            feats = features[[found[i] for i in known]].to(self.device)
            out[known] = self.model.text_proj(feats).to(out.dtype)
        if fresh:
            out[fresh] = self._encode_text_fresh([texts[i] for i in fresh]).to(out.dtype)
        return out

    def _encode_text_fresh(self, texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = tokenize_reports(self.tokenizer, texts[start:start + self.batch_size], self.max_length)
            out.append(self.model.encode_text(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)))
        if not out:
            return torch.zeros(0, self.embed_dim, device=self.device)
        return torch.cat(out)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.clamp(0, math.log(100.0)).exp())

    def _compute_fingerprint(self) -> str:
        if self._files:
            return fingerprint_files(self._files, {"kind": self.name, "max_length": self.max_length})
        return super()._compute_fingerprint()
