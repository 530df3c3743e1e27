"""A Hugging Face report tower's folder, copied with what loading needs (run folders and model folders)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# What a Hugging Face tower folder needs (top-level files only): config, weights, tokenizer, licence, README.
HF_KEEP = ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "*.model",
           "LICEN[CS]E*", "COPYING*", "NOTICE*", "README*")


def copy_text_backbone(src: Path, dest: Path, backbone: Any) -> list[str]:
    """Copy an ``hf`` report tower's folder into ``dest`` (a model or run folder's ``text_backbone/``).

    Only what loading needs plus the licence and README travel (not ONNX/TF exports or sentence-transformers
    extras). A folder whose weights are pickled only (``pytorch_model.bin``) gets ``model.safetensors``
    written from ``backbone`` instead, so loading never unpickles.

    Args:
        src: the source Hugging Face folder.
        dest: the folder to create.
        backbone: the loaded ``transformers`` model (used only when ``src`` has no safetensors weights).

    Returns:
        The copied file names.
    """
    dest.mkdir(parents=True)
    names = sorted({p.name for pattern in HF_KEEP for p in src.glob(pattern) if p.is_file()})
    for name in names:
        shutil.copy2(src / name, dest / name)
    if not any(n.endswith(".safetensors") for n in names):
        log.info("%s has no safetensors weights; writing %s/model.safetensors from the loaded tower", src, dest.name)
        backbone.save_pretrained(str(dest), safe_serialization=True)
        names = sorted(p.name for p in dest.iterdir())
    if tower_licence(dest) is None:
        log.warning("%s states no licence (no LICENSE file, no 'license:' in its README); check the report "
                    "tower's licence before sharing the model folder", src)
    return names


def tower_licence(folder: Path) -> str | None:
    """A Hugging Face folder's licence: its licence file's name, else the ``license:`` of its README's front
    matter (how Hugging Face model cards state it, e.g. ``apache-2.0``), else None."""
    files = sorted(p.name for pattern in ("LICEN[CS]E*", "COPYING*") for p in folder.glob(pattern) if p.is_file())
    if files:
        return files[0]
    readme = folder / "README.md"
    text = readme.read_text(errors="replace") if readme.is_file() else ""
    if text.startswith("---"):
        for line in text.split("---", 2)[1].splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "license" and value.strip():
                return value.strip()
    return None
