"""Fixtures for the inference tests: a tiny trained-looking run folder and its exported model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from infer_helpers import make_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("infer_run"))


@pytest.fixture(scope="session")
def tiny_metrics(tmp_path_factory) -> Path:
    from ctxray.labels import load_labels

    names = load_labels().names
    path = tmp_path_factory.mktemp("infer_eval") / "metrics.json"
    thresholds = {n: round(0.3 + 0.02 * i, 3) for i, n in enumerate(names)}
    path.write_text(json.dumps({"zero_shot": {"macro_auc": 0.6, "thresholds": thresholds}}))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_run, tiny_metrics) -> Path:
    from ctxray.inference.export import export_model

    return export_model(tiny_run, tmp_path_factory.mktemp("infer_model") / "model", metrics=tiny_metrics)
