"""Checkpoints: safetensors + JSON folders written atomically; ``load_model`` for every later stage.

A checkpoint folder (``RUN/checkpoints/last`` or ``best``) holds ``model.safetensors``, ``config.json``
(the resolved ``TrainConfig`` with the code version), ``tokenizer/``, ``metrics.json`` and, in ``last``,
``state.safetensors`` + ``state.json``: optimiser, scheduler, loss scaler, data position and every
rank's RNG states, so ``--resume`` continues the same trajectory. Nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import ctxray
from ctxray.config import from_dict, to_dict
from ctxray.models.dual import DualEncoder
from ctxray.models.text import Tokenizer
from ctxray.train.config import ReportTowerConfig, read_stored_config
from ctxray.utils.io import atomic_write_dir, atomic_write_text

log = logging.getLogger(__name__)

MODEL_FILE, CONFIG_FILE, STATE_FILE, STATE_JSON, TOKENIZER_DIR = (
    "model.safetensors", "config.json", "state.safetensors", "state.json", "tokenizer")
TEXT_BACKBONE_DIR = "text_backbone"  # a copied Hugging Face report tower, next to ``checkpoints/`` or ``encoder/``


def code_version() -> dict[str, str]:
    """The package version, torch version and, when the source is a git checkout, its commit."""
    version = {"ctxray": ctxray.__version__, "torch": torch.__version__}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(ctxray.__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        version["git"] = sha
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's Python, NumPy and torch (CPU, CUDA) RNG states as (tensors, JSON)."""
    np_state = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    meta = {"python": [py[0], list(py[1]), py[2]], "numpy": [np_state[0], int(np_state[2]), int(np_state[3]),
                                                              float(np_state[4])]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore states captured by ``rng_state``."""
    torch.set_rng_state(tensors["torch"].to(torch.uint8))
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"].to(torch.uint8))
    name, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((name, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


@dataclass
class ResumeState:
    """Where a run is: counters, the best validation score, and opaque optimiser/RNG states."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    world_size: int = 1
    meta: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(dest: Path, model: nn.Module, tokenizer: Any, config: Any, metrics: dict[str, Any],
                    state: ResumeState | None = None) -> None:
    """Write one checkpoint folder atomically.

    Args:
        dest: the folder (replaced as a whole).
        model: the bare model (not a DDP wrapper).
        tokenizer: has ``save(dir)``.
        config: the resolved ``TrainConfig``.
        metrics: JSON-ready scores of this point of the run.
        state: the resume state; None for a folder that only serves loading (``best``).
    """
    def write(tmp: Path) -> None:
        save_file(_model_tensors(model), str(tmp / MODEL_FILE))
        (tmp / CONFIG_FILE).write_text(json.dumps(to_dict(config), indent=2, sort_keys=True))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tokenizer.save(tmp / TOKENIZER_DIR)
        if state is not None:
            save_file(state.tensors, str(tmp / STATE_FILE))
            meta = {"step": state.step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                    "best_metric": state.best_metric, "best_step": state.best_step,
                    "world_size": state.world_size, **state.meta}
            (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1))

    atomic_write_dir(Path(dest), write)


def load_resume_state(ckpt: Path) -> ResumeState:
    """Read ``state.safetensors`` + ``state.json`` of a ``last`` checkpoint."""
    ckpt = Path(ckpt)
    for name in (STATE_FILE, STATE_JSON):
        if not (ckpt / name).is_file():
            raise FileNotFoundError(f"{ckpt / name}: no resume state (was the run saved by ctxray train?)")
    meta = json.loads((ckpt / STATE_JSON).read_text())
    counters = {k: meta.pop(k) for k in ("step", "epoch", "step_in_epoch", "best_metric", "best_step",
                                         "world_size")}
    return ResumeState(**counters, meta=meta, tensors=load_file(str(ckpt / STATE_FILE)))


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint folder from a run folder (``best`` then ``last``) or a checkpoint folder itself."""
    p = Path(path)
    if (p / MODEL_FILE).is_file():
        return p
    order = [prefer, "last" if prefer == "best" else "best"]
    for name in order:
        cand = p / "checkpoints" / name
        if (cand / MODEL_FILE).is_file():
            return cand
    raise FileNotFoundError(f"{p}: neither a checkpoint folder ({MODEL_FILE}) nor a run folder with "
                            f"checkpoints/{{best,last}}")


def model_root(ckpt: Path) -> Path:
    """The folder a checkpoint's relative paths are relative to: ``RUN`` for ``RUN/checkpoints/NAME``, else
    the checkpoint's parent (``MODEL_DIR`` for ``MODEL_DIR/encoder``)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def text_backbone_path(config: Any, root: Path, where: str = "") -> Path | None:
    """The local Hugging Face folder of an ``hf`` report tower (None for other towers).

    A relative ``model.text.hf_path`` is resolved against ``root`` (the run or model folder), never
    against the current directory; an absolute one (runs written before towers were copied) is kept.

    Raises:
        FileNotFoundError: the folder does not exist (names ``where``, the config it came from).
    """
    text = getattr(getattr(config, "model", None), "text", None)
    if getattr(text, "kind", "") != "hf" or not text.hf_path:
        return None
    path = Path(text.hf_path)
    path = path if path.is_absolute() else Path(root).resolve() / path
    if not path.is_dir():
        raise FileNotFoundError(f"{where or 'model.text.hf_path'}: the report tower's Hugging Face folder "
                                f"{text.hf_path!r} not found ({path})")
    return path


def load_model(run_or_ckpt_dir: str | Path, prefer: str = "best", map_location: str = "cpu",
               root: str | Path | None = None):
    """Rebuild a trained dual encoder for evaluation, generation or export.

    Args:
        run_or_ckpt_dir: a run folder (``ctxray train --out RUN``) or one of its checkpoint folders.
        prefer: which checkpoint of a run folder to take first (``best`` or ``last``).
        root: the folder a relative ``model.text.hf_path`` is relative to (default :func:`model_root`).

    Returns:
        (DualEncoder in eval mode, Tokenizer, TrainConfig).
    """
    ckpt = resolve_checkpoint(run_or_ckpt_dir, prefer)
    try:
        config = read_stored_config(json.loads((ckpt / CONFIG_FILE).read_text()), str(ckpt / CONFIG_FILE))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{ckpt / CONFIG_FILE}: cannot read the training config: {err}") from err
    backbone = text_backbone_path(config, Path(root) if root is not None else model_root(ckpt), str(ckpt / CONFIG_FILE))
    model_cfg = config.model
    if backbone is not None:  # build from the resolved folder; the returned config keeps the stored path
        model_cfg = replace(model_cfg, text=replace(model_cfg.text, hf_path=str(backbone)))
    model = DualEncoder(model_cfg)
    state = load_file(str(ckpt / MODEL_FILE), device=map_location)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt / MODEL_FILE}: weights do not fit the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    tokenizer = Tokenizer.from_pretrained(ckpt / TOKENIZER_DIR)
    return model.to(map_location).eval(), tokenizer, config


def write_json(path: Path, data: Any) -> None:
    """A JSON file written atomically."""
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=True))


def read_report_tower(folder: str | Path) -> tuple[ReportTowerConfig, dict[str, torch.Tensor]]:
    """The config and weights of a pre-trained report-tower folder (``ctxray.train.report_tower``).

    Raises:
        FileNotFoundError: a file of the folder is missing. ValueError: unreadable config or no tower tensors.
    """
    root = Path(folder)
    for name in (CONFIG_FILE, MODEL_FILE, TOKENIZER_DIR):
        if not (root / name).exists():
            raise FileNotFoundError(f"{root / name}: not found; is {root} a report-tower folder "
                                    "(ctxray pretrain-text)?")
    try:
        cfg = from_dict(ReportTowerConfig, json.loads((root / CONFIG_FILE).read_text()), str(root / CONFIG_FILE))
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"{root / CONFIG_FILE}: not a ReportTowerConfig: {err}") from err
    state = load_file(str(root / MODEL_FILE))
    if not any(k.startswith("text_encoder.") for k in state) or "text_proj.weight" not in state:
        raise ValueError(f"{root / MODEL_FILE}: no 'text_encoder.*' and 'text_proj.weight' tensors")
    return cfg, state
