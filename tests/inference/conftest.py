"""Fixtures for the inference tests: a tiny trained-looking run folder and its exported model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .infer_helpers import make_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("infer_run"))


@pytest.fixture(scope="session")
def tiny_metrics(tmp_path_factory) -> Path:
    """An evaluation metrics.json written through ctxray.evaluate's own protocol (so its schema is real)."""
    import numpy as np

    from ctxray.evaluate.protocol import zero_shot_protocols
    from ctxray.labels import load_labels

    names = load_labels().names
    rng = np.random.default_rng(0)
    y = (rng.random((40, len(names))) < 0.4).astype(np.float32)
    scores = np.clip(0.3 * y + 0.7 * rng.random(y.shape), 0, 1)
    zs = zero_shot_protocols(y, scores, [f"s{i}" for i in range(40)], names, n_boot=5)
    zs["thresholds"]["split"] = "valid"
    path = tmp_path_factory.mktemp("infer_eval") / "metrics.json"
    path.write_text(json.dumps({"zero_shot": zs}))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_run, tiny_metrics) -> Path:
    from ctxray.inference.export import export_model

    return export_model(tiny_run, tmp_path_factory.mktemp("infer_model") / "model", metrics=tiny_metrics)
