"""Report generation inside a model folder: wraps the generator folder of ``ctxray generate train``.

The generator folder (copied into ``MODEL_DIR/decoder`` by ``ctxray export --decoder G``) carries its
own frozen volume encoder, tokenizer, decoding settings and preprocessing spec; export checks that
spec equals the model folder's, so one preprocessed input serves zero-shot, heatmaps and the report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def check_decoder_spec(decoder_dir: str | Path, spec_file: str | Path) -> None:
    """Raise ``ValueError`` if the generator folder was trained on another preprocessing spec."""
    theirs = Path(decoder_dir) / "spec.json"
    if not theirs.is_file():
        raise ValueError(f"{theirs}: missing; the report generator must carry the spec it was trained with")
    a, b = json.loads(theirs.read_text()), json.loads(Path(spec_file).read_text())
    if a != b:
        raise ValueError(f"{theirs}: the report generator was trained on preprocessing spec {a.get('name')!r}, "
                         f"the model on {b.get('name')!r} ({spec_file}); export a generator trained on the same cache")


def load_generator(decoder_dir: str | Path) -> Callable[[torch.Tensor], str]:
    """A function from one preprocessed volume to its generated report text.

    Returns:
        ``fn(x) -> str`` with x (1, 1, D, H, W) float32 in [0, 1]; the text is
        ``report_text(findings, impression)``.
    """
    from ctxray.generate.data import extract_features
    from ctxray.generate.run import generate_texts
    from ctxray.generate.train import load_generator as load_generator_folder

    gen = load_generator_folder(decoder_dir)

    def generate(x: torch.Tensor) -> str:
        feats = extract_features(gen.encoder.feature_map, [lambda: x], gen.cfg.decoder.visual_grid, 1, "cpu")
        return generate_texts(gen.decoder, gen.tokenizer, feats, gen.cfg.decode)[0]

    return generate
