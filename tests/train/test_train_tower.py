"""A training run carries its Hugging Face report tower: copied into ``RUN/text_backbone/``, named relatively,
so a run (and the model folder exported from it) moved elsewhere loads, resumes and predicts identically with
the source folder gone."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ctxray.train.checkpoint import load_model
from ctxray.train.loop import train

from .test_train_support import tiny_config, write_cache

REPORTS = ["There is a lung nodule. No pleural effusion.", "Cardiomegaly with pericardial effusion."]


def _hf_tower(folder, tok):
    """A tiny random BERT folder with a licence, a README and an extra the copy should leave behind."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=64), add_pooling_layer=False
              ).save_pretrained(folder)
    tok.save(folder)
    (folder / "LICENSE").write_text("Test licence.\n")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\nA tiny BERT.\n")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"not needed")
    return folder


def _outputs(model, tok):
    vol = torch.rand(2, 1, 16, 32, 32, generator=torch.Generator().manual_seed(1))
    enc = tok(REPORTS, max_length=48)
    with torch.no_grad():
        out = model(vol, enc["input_ids"], enc["attention_mask"])
    return {k: out[k] for k in ("volume", "text")}


@pytest.fixture()
def hf_run(tmp_path):
    from ctxray.data.cachedir import read_manifest
    from ctxray.models.text import Tokenizer

    cache = write_cache(tmp_path / "cache", n_train=8, n_valid=4, seed=5)
    tok = Tokenizer.train([r["report"] for r in read_manifest(cache, "train")] + REPORTS, vocab_size=200,
                          min_frequency=1)
    tower = _hf_tower(tmp_path / "src_tower", tok)
    cfg = tiny_config(cache, None, **{"model.text.kind": "hf", "model.text.hf_path": str(tower),
                                      "model.text.pooling": "mean", "optim.epochs": 2})
    return cfg, tower


def test_a_run_copies_its_tower_and_moves_without_it(hf_run, tmp_path, monkeypatch):
    from ctxray.inference.export import export_model

    cfg, tower = hf_run
    run = tmp_path / "run"
    train(cfg, run, stop_after=3)  # mid-run: resume must find the tower inside the run too
    for where in (run / "config.json", run / "checkpoints" / "last" / "config.json"):
        assert json.loads(where.read_text())["model"]["text"]["hf_path"] == "text_backbone", where
    copied = sorted(p.name for p in (run / "text_backbone").iterdir())
    assert {"LICENSE", "README.md", "config.json", "model.safetensors"} <= set(copied) and "onnx" not in copied
    assert str(tower) not in (run / "config.json").read_text()

    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run, moved)
    m, tok, _ = load_model(run, prefer="last")
    before = _outputs(m, tok)
    shutil.rmtree(tower)  # the source Hugging Face folder and the original run are gone
    shutil.rmtree(run)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # relative paths resolve against the run, not the current directory
    m, tok, _ = load_model(moved, prefer="last")
    after = _outputs(m, tok)
    for k in before:
        assert torch.equal(before[k], after[k]), k

    done = train(cfg, moved, resume=True)
    assert done["step"] == 4  # 8 volumes / batch 4 x 2 epochs
    model_dir = export_model(moved, tmp_path / "model")
    assert json.loads((model_dir / "model.json").read_text())["text_backbone_licence"] == "LICENSE"
    m, tok, _ = load_model(moved, prefer="best")
    ref = _outputs(m, tok)
    travelled = tmp_path / "far" / "model"
    shutil.copytree(model_dir, travelled)
    shutil.rmtree(model_dir)
    shutil.rmtree(moved)
    m, tok, _ = load_model(travelled / "encoder")
    got = _outputs(m, tok)
    for k in ref:
        np.testing.assert_array_equal(ref[k].numpy(), got[k].numpy())


def test_starting_over_replaces_the_copied_tower(hf_run, tmp_path):
    cfg, tower = hf_run
    run = tmp_path / "run"
    train(cfg, run, stop_after=1)
    (run / "text_backbone" / "stale.txt").write_text("from an older run")
    train(cfg, run, stop_after=1)
    assert not (run / "text_backbone" / "stale.txt").exists()
    assert not (run / ".text_backbone.tmp").exists()
