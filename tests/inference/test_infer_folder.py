"""A model folder travels: an ``hf`` report tower is copied in, named by a relative path, and checked."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import ctxray
from ctxray.inference.api import ModelFolderError
from ctxray.inference.export import export_model
from ctxray.inference.folder import MANIFEST

from .infer_helpers import REPORTS, make_run, synthetic_ct

SPACING = (9.0, 8.0, 8.0)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory):
    """(run, model folder, the run's HF tower folder) for a run whose report tower is ``kind="hf"``."""
    root = tmp_path_factory.mktemp("hf_run")
    run = make_run(root, hf_tower=True)
    return run, export_model(run, root / "model"), root / "hf_tower"


def _outputs(model):
    findings = model.zero_shot(synthetic_ct(), spacing=SPACING)
    return (np.array([f.probability for f in findings]), model.embed_volume(synthetic_ct(), spacing=SPACING),
            model.embed_text(REPORTS))


def test_moved_model_folder_loads_without_the_original_tower(hf_model, tmp_path, monkeypatch):
    from ctxray.models.zeroshot import encode_texts
    from ctxray.train.checkpoint import load_model

    run, model_dir, tower = hf_model
    stored = json.loads((model_dir / "encoder" / "config.json").read_text())["model"]["text"]
    assert stored["kind"] == "hf" and stored["hf_path"] == "text_backbone"
    files = json.loads((model_dir / MANIFEST).read_text())["files"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "LICENSE", "README.md"):
        assert f"text_backbone/{name}" in files, name
    assert not any("onnx" in f for f in files), "only what loading needs travels"
    info = json.loads((model_dir / "model.json").read_text())
    assert info["text_backbone_licence"] == "LICENSE" and str(tower) not in json.dumps(info)
    assert "included as `text_backbone/`; its licence: LICENSE" in (model_dir / "MODEL_CARD.md").read_text()

    first = tmp_path / "here" / "model"
    shutil.copytree(model_dir, first)
    before = _outputs(ctxray.load(first))
    m, tok, _ = load_model(run)  # the run (absolute hf_path, as training writes it) still loads: same text tower
    np.testing.assert_array_equal(before[2], encode_texts(m, tok, REPORTS).numpy())

    moved = tmp_path / "elsewhere" / "model"
    moved.parent.mkdir()
    shutil.move(str(first), moved)
    shutil.rmtree(tower)  # the original Hugging Face folder is gone
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a relative hf_path must not be resolved against the current directory
    after = _outputs(ctxray.load(moved))
    assert not first.exists()
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_copied_tower_files_are_checked_like_the_rest(hf_model, tmp_path):
    _, model_dir, _ = hf_model
    unlisted = tmp_path / "unlisted"
    shutil.copytree(model_dir, unlisted)
    manifest = json.loads((unlisted / MANIFEST).read_text())
    del manifest["files"]["text_backbone/model.safetensors"]
    (unlisted / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=r"text_backbone/model\.safetensors: not listed in manifest\.json"):
        ctxray.load(unlisted)

    missing = tmp_path / "missing"
    shutil.copytree(model_dir, missing)
    (missing / "text_backbone" / "config.json").unlink()
    with pytest.raises(ModelFolderError, match=r"text_backbone/config\.json: missing"):
        ctxray.load(missing)


def test_a_relative_tower_path_that_does_not_exist_names_it(hf_model, tmp_path):
    from ctxray.train.checkpoint import load_model

    _, model_dir, _ = hf_model
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "text_backbone")
    with pytest.raises(FileNotFoundError, match=r"encoder/config\.json: the report tower's Hugging Face folder "
                                                r"'text_backbone' not found"):
        load_model(broken / "encoder")
