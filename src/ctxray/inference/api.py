"""The Python API on an exported model folder: ``model = ctxray.load(MODEL_DIR)``.

``load`` checks every file against ``manifest.json`` (SHA-256) before reading anything, so a
missing or altered file fails with an error naming it, and it never unpickles: weights are
safetensors, the rest JSON or text. Inputs to every method are a NIfTI path, a DICOM folder, an
``.npz``, a ``ctxray.data.readers.Volume``, or a HU array ``(D, H, W)`` on the RAS grid with its
``spacing=(sz, sy, sx)`` in mm. Each volume is preprocessed with the spec the model was trained with.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctxray.data.readers import Volume, read_volume_raw
from ctxray.data.validate import check_values, validate_raw
from ctxray.inference.folder import ModelFolderError, read_model_folder, verify_model_dir
from ctxray.inference.heatmap import direction_score, explain, invert_map, method_spec
from ctxray.inference.report import report_writer
from ctxray.models.zeroshot import encode_texts, prompt_embeddings, zero_shot_probs
from ctxray.train.checkpoint import load_model

__all__ = ["CTModel", "Finding", "ModelFolderError", "NoDecoderError", "load", "verify_model_dir"]

log = logging.getLogger(__name__)


class NoDecoderError(RuntimeError):
    """The model folder has no report decoder."""


@dataclass
class Finding:
    """One label's zero-shot result (``decision`` is ``probability >= threshold``)."""

    label: str
    probability: float
    threshold: float
    decision: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CTModel:
    """A loaded model folder: embeddings, zero-shot findings, reports and relevance maps.

    Build it with :func:`load`. Attributes: ``labels`` (names in order), ``thresholds``, ``spec``,
    ``card`` (the model card text), ``info`` (``model.json``), ``model`` (the ``DualEncoder``).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, spec: Any, label_set: Any,
                 thresholds: dict[str, float], card: str = "", info: dict | None = None,
                 decoder_dir: Path | None = None, localisation: dict | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.spec = spec
        self.label_set = label_set
        self.labels: list[str] = list(label_set.names)
        self.thresholds = {n: float(thresholds.get(n, 0.5)) for n in self.labels}
        self.card = card
        self.info = info or {}
        self.decoder_dir = decoder_dir
        self.localisation = localisation or {}
        self._prompts: tuple[torch.Tensor, torch.Tensor] | None = None
        self._generator: Any = None

    # ---- inputs --------------------------------------------------------------------------------
    def read(self, volume: Any, spacing: tuple[float, float, float] | None = None, series_uid: str | None = None):
        """The input as a ``ctxray.data.readers.Volume`` (HU, spacing, affine, source), checked as ``preprocess``
        checks volumes (:mod:`ctxray.data.validate`: NaN voxels, constant volumes, bad grids are refused).

        Args:
            series_uid: for a DICOM folder with several CT series, which one (UID or ``dcm-`` id).

        Raises:
            ValueError: an array without ``spacing``, or of the wrong rank.
            ctxray.data.readers.VolumeReadError: a file or folder that cannot be read or fails a check (names it).
        """
        if isinstance(volume, Volume):
            check_values(volume.hu, volume.source)
            return volume
        if isinstance(volume, str | Path):
            raw = read_volume_raw(volume, series_uid=series_uid)
            validate_raw(raw, volume)
            return raw.to_volume()
        arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        if arr.ndim != 3:
            raise ValueError(f"a volume array must be (D, H, W) HU on the RAS grid, got shape {arr.shape}")
        if spacing is None:
            raise ValueError("an array input needs its spacing=(sz, sy, sx) in mm")
        sp = tuple(float(s) for s in spacing)
        affine = np.diag([sp[2], sp[1], sp[0], 1.0])
        check_values(arr, "array")
        return Volume(arr.astype(np.float32, copy=False), sp, affine, "array")

    def preprocess(self, volume: Any, spacing: tuple[float, float, float] | None = None) -> torch.Tensor:
        """The model input for one volume, preprocessed exactly as in training.

        Shape:
            output: (1, 1, D, H, W) float32 in [0, 1] (``spec.shape_zyx``)
        """
        vol = self.read(volume, spacing)
        x = self.spec.apply(vol.hu, vol.spacing_zyx)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]

    # ---- embeddings and zero-shot ------------------------------------------------------------
    def embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings of preprocessed inputs (see :meth:`preprocess`).

        Shape:
            x: (B, 1, D, H, W) -> (B, E) float32, L2-normalised
        """
        with torch.no_grad():
            return self.model.encode_volume(x).float()

    def embed_volume(self, volume: Any, spacing: tuple[float, float, float] | None = None) -> np.ndarray:
        """L2-normalised volume embedding.

        Shape:
            output: (E,) float32
        """
        return self.embed_input(self.preprocess(volume, spacing))[0].numpy()

    def embed_text(self, texts: str | list[str]) -> np.ndarray:
        """L2-normalised report embeddings.

        Shape:
            output: (N, E) float32
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        return encode_texts(self.model, self.tokenizer, texts).numpy()

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative prompt-ensemble embeddings (computed once). Shape: (L, E) each."""
        if self._prompts is None:
            self._prompts = prompt_embeddings(self.model, self.tokenizer, self.label_set)
        return self._prompts

    def _label_rows(self, labels: list[str] | None) -> list[int]:
        names = self.labels if labels is None else list(labels)
        unknown = [n for n in names if n not in self.labels]
        if unknown:
            raise KeyError(f"unknown label(s) {unknown}; this model knows {self.labels}")
        return [self.labels.index(n) for n in names]

    def findings_from_embedding(self, emb: torch.Tensor | np.ndarray, labels: list[str] | None = None) -> list[Finding]:
        """Zero-shot findings for an embedding already computed (see :meth:`zero_shot`)."""
        pos, neg = self.prompt_embeddings()
        v = torch.as_tensor(np.asarray(emb, dtype=np.float32)).reshape(1, -1)
        probs = zero_shot_probs(v, pos, neg, self.model.scale())[0]
        out = []
        for i in self._label_rows(labels):
            name, p = self.labels[i], float(probs[i])
            out.append(Finding(name, p, self.thresholds[name], p >= self.thresholds[name]))
        return out

    def zero_shot(self, volume: Any, labels: list[str] | None = None,
                  spacing: tuple[float, float, float] | None = None) -> list[Finding]:
        """Per-label probability and decision.

        Args:
            volume: a path, a ``Volume`` or a HU array (with ``spacing``).
            labels: a subset of ``self.labels`` (None: all, in the model's order).

        Returns:
            One :class:`Finding` per label.
        """
        return self.findings_from_embedding(self.embed_volume(volume, spacing), labels)

    # ---- report and heatmaps -----------------------------------------------------------------
    def generate_report(self, volume: Any, spacing: tuple[float, float, float] | None = None) -> str:
        """The generated report (Findings + Impression) for a volume.

        Raises:
            NoDecoderError: the model folder has no report decoder (export it with ``--decoder``).
        """
        return self.generate_from_input(self.preprocess(volume, spacing))

    def generate_from_input(self, x: torch.Tensor) -> str:
        """Generated report for a preprocessed input. Shape: x (1, 1, D, H, W)."""
        if self.decoder_dir is None:
            raise NoDecoderError("this model folder has no report decoder; export the run with "
                                 "`ctxray export --decoder G` to include one")
        if self._generator is None:
            self._generator = report_writer(self.decoder_dir)
        return self._generator(x)

    def explain(self, volume: Any, label: str, spacing: tuple[float, float, float] | None = None,
                method: str = "gradcam") -> np.ndarray:
        """A relevance map for ``label`` aligned with the input volume (see ``ctxray.inference.heatmap``).

        Args:
            method: ``gradcam``, ``hirescam`` or ``occlusion``.

        Returns:
            Values in [0, 1] on the input's voxel grid. Shape: (D, H, W) of the input volume.
        """
        vol = self.read(volume, spacing)
        x = torch.from_numpy(np.ascontiguousarray(self.spec.apply(vol.hu, vol.spacing_zyx)))[None, None]
        return self.explain_input(x, label, vol.hu.shape, vol.spacing_zyx, method=method)[0]

    def validated_labels(self, method: str = "gradcam") -> list[str]:
        """Labels whose maps by ``method`` passed the pointing benchmark recorded at export (``localisation.json``)."""
        return list(self.localisation.get("methods", {}).get(method, {}).get("validated", []))

    def decisions(self, x: torch.Tensor) -> dict[str, bool]:
        """Label -> zero-shot decision for one preprocessed input. Shape: x (1, 1, D, H, W)."""
        return {f.label: f.decision for f in self.findings_from_embedding(self.embed_input(x)[0])}

    def relevance_input(self, x: torch.Tensor, label: str, method: str = "gradcam", stage: Any = "auto"):
        """Relevance map of a preprocessed input on the model grid (``ctxray.inference.heatmap.Relevance``).

        Args:
            method: a method spec (``ctxray.inference.heatmap.method_spec``: ``gradcam``, ``occlusion:blur``, ...).
            stage: the CAM's feature stage (``"auto"``: the encoder's ``explain_stage``; None: the last), unless
                the spec names one.
        """
        name, options = method_spec(method)
        (i,) = self._label_rows([label])
        pos, neg = self.prompt_embeddings()
        return explain(self.model, x, direction_score(self.model, pos[i] - neg[i]), name,  # type: ignore[arg-type]
                       **{"stage": stage, **options})

    def explain_input(self, x: torch.Tensor, label: str, shape: tuple[int, ...],
                      spacing_zyx: tuple[float, float, float], method: str = "gradcam") -> tuple[np.ndarray, str]:
        """Relevance map of a preprocessed input, mapped onto the original grid; also the method."""
        rel = self.relevance_input(x, label, method)
        return invert_map(self.spec, rel.map, shape, spacing_zyx), rel.method

    def __repr__(self) -> str:
        return (f"CTModel(encoder={self.info.get('encoder')!r}, labels={len(self.labels)}, "
                f"input={tuple(self.spec.shape_zyx)}, decoder={self.decoder_dir is not None})")


def load(model_dir: str | Path, map_location: str = "cpu") -> CTModel:
    """Load a model folder written by ``ctxray export`` (layout and checks: :mod:`ctxray.inference.folder`).

    Args:
        model_dir: the folder.
        map_location: device for the weights.

    Raises:
        ModelFolderError: a missing or altered file (named), a folder of another format, or not a model folder.
    """
    folder = read_model_folder(model_dir)
    model, tokenizer, _config = load_model(folder.encoder_dir, map_location=map_location, root=folder.root)
    return CTModel(model, tokenizer, folder.spec, folder.label_set, folder.thresholds, card=folder.card,
                   info=folder.info.to_dict(), decoder_dir=folder.decoder_dir, localisation=folder.localisation)
