"""A supervised label classifier as an explanation subject: the reference model of issue 14.

Explanation methods are validated on a model that certainly sees the lesions before they are trusted on a
CT-report model: a volume encoder plus a linear head trained with binary cross-entropy on the labels
(``ctxray.evaluate.finetune.train_full``). :class:`ClassifierModel` gives it what
:func:`ctxray.inference.pointing.collect_cases` needs (read, preprocess, decide, explain), with the
label's logit as the explained score.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ctxray.data.readers import Volume, read_volume_raw
from ctxray.inference.heatmap import Relevance, explain, method_spec
from ctxray.models.registry import create_volume_encoder


class ClassifierModel:
    """A trained ``nn.Sequential(encoder, linear head)`` with its labels, preprocessing spec and thresholds.

    Args:
        net: maps (B, 1, D, H, W) to (B, L) logits.
        labels: the L label names.
        spec: the ``PreprocessSpec`` of its inputs.
        thresholds: probability thresholds per label (0.5 when absent, e.g. a ``classifier.json`` without them).
    """

    def __init__(self, net: nn.Module, labels: Sequence[str], spec: Any, thresholds: dict[str, float] | None = None):
        self.net = net.eval()
        self.labels = list(labels)
        self.spec = spec
        self.thresholds = {n: float((thresholds or {}).get(n, 0.5)) for n in self.labels}

    def read(self, volume: Any):
        """A path (NIfTI, DICOM folder, ``.npz``) or a ``Volume`` as a ``Volume``."""
        return volume if isinstance(volume, Volume) else read_volume_raw(volume).to_volume()

    def preprocess(self, volume: Any) -> torch.Tensor:
        """Shape: (1, 1, D, H, W) float32 (``spec.shape_zyx``)."""
        vol = self.read(volume)
        return torch.from_numpy(np.ascontiguousarray(self.spec.apply(vol.hu, vol.spacing_zyx)))[None, None]

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """Shape: (B, 1, D, H, W) -> (B, L)."""
        with torch.no_grad():
            return torch.sigmoid(self.net(x)).float().numpy()

    def decisions(self, x: torch.Tensor) -> dict[str, bool]:
        p = self.probabilities(x)[0]
        return {n: bool(p[i] >= self.thresholds[n]) for i, n in enumerate(self.labels)}

    def relevance_input(self, x: torch.Tensor, label: str, method: str = "gradcam", stage: Any = "auto",
                        **kwargs: Any) -> Relevance:
        """The label's logit explained on the model grid (``ctxray.inference.heatmap.explain``; ``method`` is a spec
        of ``method_spec``, e.g. ``occlusion:blur``; ``kwargs`` go to ``explain``)."""
        name, options = method_spec(method)
        i = self.labels.index(label)
        return explain(self.net, x, lambda v: self.net(v)[:, i], name,  # type: ignore[arg-type]
                       **{"stage": stage, **options, **kwargs})


def build_classifier(encoder: str, input_shape: Sequence[int], n_labels: int, **encoder_kwargs: Any) -> nn.Sequential:
    """``nn.Sequential(encoder, nn.Linear(out_dim, n_labels))`` as ``train_full`` builds it."""
    enc = create_volume_encoder(encoder, input_shape=tuple(input_shape), **encoder_kwargs)
    return nn.Sequential(enc, nn.Linear(int(enc.out_dim), n_labels))


def build_from_info(info: dict) -> nn.Module:
    """The untrained network a ``classifier.json`` describes: ``head`` ``linear`` (default;
    :func:`build_classifier`) or ``lse`` (:class:`ctxray.inference.localising.LocalisingClassifier`)."""
    kwargs = info.get("encoder_kwargs", {})
    if info.get("head", "linear") == "lse":
        from ctxray.inference.localising import LocalisingClassifier

        return LocalisingClassifier(len(info["labels"]), info["input_shape"], **kwargs)
    return build_classifier(info["encoder"], info["input_shape"], len(info["labels"]), **kwargs)


def load_classifier(folder: str | Path, spec: Any) -> ClassifierModel:
    """A classifier written by ``bench/train_supervised.py`` (``model.safetensors`` + ``classifier.json``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    info = json.loads((folder / "classifier.json").read_text())
    net = build_from_info(info)
    net.load_state_dict(load_file(str(folder / "model.safetensors")))
    return ClassifierModel(net, info["labels"], spec, info.get("thresholds"))
