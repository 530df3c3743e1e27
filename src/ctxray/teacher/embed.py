"""Batched, normalised teacher embeddings of texts and X-ray image files, with an on-disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ctxray.data.xray import load_xray_image, read_xray_gallery
from ctxray.teacher.base import Teacher
from ctxray.utils.io import atomic_write, atomic_write_text
from ctxray.utils.progress import progress

log = logging.getLogger(__name__)


def embed_texts(teacher: Teacher, texts: Sequence[str], batch_size: int = 256, desc: str = "texts") -> torch.Tensor:
    """L2-normalised text embeddings; each distinct text is encoded once, in batches of similar length.

    Shape:
        returns (len(texts), teacher.embed_dim) float32 on CPU
    """
    distinct = sorted(set(texts), key=lambda t: (len(t), t))  # similar lengths share a batch: less padding
    row = {t: i for i, t in enumerate(distinct)}
    out = [torch.zeros(0, teacher.embed_dim)]
    starts = range(0, len(distinct), batch_size)
    quiet = True if len(starts) < 2 else None
    for start in progress(starts, total=len(starts), desc=f"embed {desc}", unit="batch", disable=quiet):
        with torch.no_grad():
            emb = teacher.encode_text(distinct[start:start + batch_size])
        out.append(F.normalize(emb.float(), dim=-1).cpu())
    table = torch.cat(out)
    return table[[row[t] for t in texts]] if len(texts) else table


def embed_image_files(teacher: Teacher, paths: Sequence[Path], batch_size: int = 64,
                      desc: str = "images") -> torch.Tensor:
    """L2-normalised image embeddings of radiograph files, loaded at the teacher's ``image_size``.

    Shape:
        returns (len(paths), teacher.embed_dim) float32 on CPU
    """
    if not teacher.has_image_tower:
        raise ValueError(f"{teacher.name} has no image tower: cannot embed X-ray images")
    out = [torch.zeros(0, teacher.embed_dim)]
    starts = range(0, len(paths), batch_size)
    for start in progress(starts, total=len(starts), desc=f"embed {desc}", unit="batch"):
        batch = np.stack([load_xray_image(p, teacher.image_size) for p in paths[start:start + batch_size]])
        with torch.no_grad():
            emb = teacher.encode_image(torch.from_numpy(batch))  # (b, 1, S, S) -> (b, Dt)
        out.append(F.normalize(emb.float(), dim=-1).cpu())
    return torch.cat(out)


def cache_key(fingerprint: str, ids: Sequence[str], what: str) -> str:
    """Key of a cached embedding table: the teacher's fingerprint, the ids in order and what was embedded."""
    h = hashlib.sha256(f"{what}\n{fingerprint}\n".encode())
    h.update("\n".join(ids).encode())
    return h.hexdigest()[:24]


def cached_embeddings(cache_dir: Path | None, teacher: Teacher, ids: Sequence[str], what: str,
                      compute) -> torch.Tensor:
    """Return ``compute()`` (an (N, Dt) tensor), cached in ``cache_dir`` under the key of ``cache_key``.

    A cache file holds the tensor (``{what}-{key}.safetensors``) and a JSON with ids and fingerprint,
    which are checked on reading, so a stale or foreign file is recomputed, never silently reused.
    """
    if cache_dir is None:
        return compute()
    key = cache_key(teacher.fingerprint(), ids, what)
    data_path, meta_path = cache_dir / f"{what}-{key}.safetensors", cache_dir / f"{what}-{key}.json"
    if data_path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            emb = load_file(str(data_path))["embeddings"]
            if meta.get("ids") == list(ids) and meta.get("teacher") == teacher.fingerprint():
                log.info("%s embeddings from cache %s", what, data_path)
                return emb
            log.warning("%s: cache does not match the ids/teacher; recomputing", data_path)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as err:
            log.warning("%s: unreadable cache (%s); recomputing", data_path, err)
    emb = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(data_path, lambda p: save_file({"embeddings": emb.contiguous()}, str(p)))
    atomic_write_text(meta_path, json.dumps({"ids": list(ids), "teacher": teacher.fingerprint(), "what": what}))
    return emb


@dataclass
class GalleryEmbeddings:
    """A gallery's teacher embeddings (rows in ``reports.csv`` order, after the split filter).

    Args:
        ids, reports: per row. labels: (N, L) 0/1. text: (N, Dt) normalised report embeddings.
        image: (N, Dt) normalised image embeddings, None for a text-only teacher.
        teacher: the teacher's fingerprint.
    """

    ids: list[str]
    reports: list[str]
    labels: np.ndarray
    text: torch.Tensor
    image: torch.Tensor | None
    teacher: str


def embed_gallery(teacher: Teacher, xray_dir: str | Path, split: str | None = None,
                  cache_dir: str | Path | None = None, images: bool = True) -> GalleryEmbeddings:
    """Embed a gallery's reports (and images, if the teacher has an image tower) once, cached.

    Args:
        teacher: a (frozen) teacher.
        xray_dir: gallery folder with ``reports.csv``.
        split: restrict to one split; None uses every row.
        cache_dir: cache folder (keyed by teacher fingerprint and ids); None disables caching.
        images: also embed the images (needed for distillation targets).
    """
    records = read_xray_gallery(xray_dir, split=split)
    if not records:
        raise ValueError(f"{xray_dir}: no gallery rows{f' in split {split!r}' if split else ''}")
    ids = [r.id for r in records]
    reports = [r.report for r in records]
    cache = Path(cache_dir) if cache_dir is not None else None
    text = cached_embeddings(cache, teacher, ids, "text", lambda: embed_texts(teacher, reports, desc="gallery reports"))
    image = None
    if images and teacher.has_image_tower:
        paths = [r.image_path for r in records]
        image = cached_embeddings(cache, teacher, ids, "image",
                                  lambda: embed_image_files(teacher, paths, desc="gallery images"))
    return GalleryEmbeddings(ids, reports, np.stack([r.labels for r in records]), text, image, teacher.fingerprint())
