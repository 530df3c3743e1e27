"""Model folder: export -> load gives the training checkpoint's outputs; integrity; no unpickling."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ctxray
from ctxray.inference.api import ModelFolderError, NoDecoderError
from ctxray.inference.export import export_model, read_thresholds
from ctxray.inference.folder import FORMAT_VERSION, ModelInfo, write_manifest
from ctxray.labels import load_labels

from .infer_helpers import synthetic_ct


def _reference_probs(run, hu, spacing):
    """Zero-shot probabilities straight from the training checkpoint, without the inference package."""
    from ctxray.data.spec import PreprocessSpec
    from ctxray.labels import load_labels
    from ctxray.models.zeroshot import prompt_embeddings, zero_shot_probs
    from ctxray.train.checkpoint import load_model

    model, tok, cfg = load_model(run)
    spec = PreprocessSpec.load(f"{cfg.data.cache}/spec.json")
    x = torch.from_numpy(spec.apply(hu.copy(), spacing))[None, None]
    with torch.no_grad():
        emb = model.encode_volume(x)
    pos, neg = prompt_embeddings(model, tok, load_labels())
    return zero_shot_probs(emb, pos, neg, model.scale())[0].numpy(), emb[0].numpy()


def test_export_load_gives_identical_zero_shot(tiny_run, tiny_model_dir, tiny_metrics):
    hu, spacing = synthetic_ct(), (9.0, 8.0, 8.0)
    ref_probs, ref_emb = _reference_probs(tiny_run, hu, spacing)
    model = ctxray.load(tiny_model_dir)
    findings = model.zero_shot(hu, spacing=spacing)
    assert [f.label for f in findings] == model.labels
    np.testing.assert_array_equal(np.array([f.probability for f in findings], np.float32), ref_probs)
    np.testing.assert_array_equal(model.embed_volume(hu, spacing=spacing), ref_emb)
    thresholds = json.loads(tiny_metrics.read_text())["zero_shot"]["thresholds"]["per_volume"]
    for f in findings:
        assert f.threshold == pytest.approx(thresholds[f.label])
        assert f.decision == (f.probability >= f.threshold)
    subset = model.zero_shot(hu, labels=["Emphysema", "Cardiomegaly"], spacing=spacing)
    assert [f.label for f in subset] == ["Emphysema", "Cardiomegaly"]
    assert subset[0].probability == findings[model.labels.index("Emphysema")].probability
    with pytest.raises(KeyError, match="Not a label"):
        model.zero_shot(hu, labels=["Not a label"], spacing=spacing)


def test_embed_text_matches_checkpoint(tiny_run, tiny_model_dir):
    from ctxray.models.zeroshot import encode_texts
    from ctxray.train.checkpoint import load_model

    m, tok, _ = load_model(tiny_run)
    texts = ["There is a lung nodule.", "No pleural effusion."]
    got = ctxray.load(tiny_model_dir).embed_text(texts)
    np.testing.assert_array_equal(got, encode_texts(m, tok, texts).numpy())
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_model_folder_contents(tiny_model_dir):
    files = json.loads((tiny_model_dir / "manifest.json").read_text())["files"]
    for name in ("encoder/model.safetensors", "encoder/config.json", "spec.json", "labels.json",
                 "thresholds.json", "MODEL_CARD.md", "model.json"):
        assert name in files, name
    assert "prompts.json" not in files  # the prompts are labels.json's templates, read from there
    assert not any("state" in f for f in files), "optimiser state must not be exported"
    card = (tiny_model_dir / "MODEL_CARD.md").read_text()
    assert "not a medical device" in card and "## Intended use" in card and "## Data" in card
    assert "zero_shot.macro" in card  # evaluation metrics reach the card
    assert "Youden" in card and "split 'valid'" in card  # and where the thresholds come from
    model = ctxray.load(tiny_model_dir)
    assert model.label_set.prompts("Emphysema") == load_labels().prompts("Emphysema")
    info = ModelInfo.from_dict(json.loads((tiny_model_dir / "model.json").read_text()))
    assert info.format == FORMAT_VERSION and info.embed_dim == model.model.cfg.embed_dim


def test_default_thresholds_are_stated(tiny_run, tmp_path):
    out = export_model(tiny_run, tmp_path / "m")
    th = json.loads((out / "thresholds.json").read_text())
    assert set(th["thresholds"].values()) == {0.5} and "default 0.5" in th["source"]
    assert "default 0.5" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(FileExistsError):
        export_model(tiny_run, out)


def test_read_thresholds_reads_the_evaluation_schema(tmp_path):
    names = ["A", "B"]
    p = tmp_path / "m.json"
    block = {"rule": "Youden J", "split": "valid", "note": "chosen apart", "per_volume": {"A": 0.2}, "per_scan": {}}
    p.write_text(json.dumps({"zero_shot": {"thresholds": block}}))
    th, note = read_thresholds(p, names)
    assert th == {"A": 0.2, "B": 0.5} and "B" in note and "Youden J on split 'valid'" in note
    for other in ({"per_label": [{"label": "A", "threshold": 0.2}]}, {"thresholds": {"A": 0.2}}, {"macro_auc": 0.7}):
        p.write_text(json.dumps(other))  # not what `ctxray evaluate` writes: refused, not searched for
        with pytest.raises(ValueError, match="no per-label thresholds"):
            read_thresholds(p, names)


@pytest.mark.parametrize(("file", "version", "word"), [("model.json", FORMAT_VERSION + 1, "newer"),
                                                       ("model.json", FORMAT_VERSION - 1, "older"),
                                                       ("manifest.json", FORMAT_VERSION + 1, "newer")])
def test_a_folder_of_another_format_is_refused(tiny_model_dir, tmp_path, file, version, word):
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    data = json.loads((other / file).read_text())
    data["format"] = version
    (other / file).write_text(json.dumps(data))
    if file != "manifest.json":
        write_manifest(other)  # a consistent folder, only of another format
    with pytest.raises(ModelFolderError, match=f"{file}: model folder format {version} is {word}"):
        ctxray.load(other)


@pytest.mark.parametrize("victim", ["encoder/model.safetensors", "spec.json", "thresholds.json"])
def test_missing_or_altered_file_fails_naming_it(tiny_model_dir, tmp_path, victim):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / victim).unlink()
    with pytest.raises(ModelFolderError, match=f"{victim}: missing"):
        ctxray.load(broken)
    shutil.copy2(tiny_model_dir / victim, broken / victim)
    data = bytearray((broken / victim).read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit
    (broken / victim).write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match=f"{victim}: altered"):
        ctxray.load(broken)


def test_load_never_unpickles(tiny_model_dir, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = ctxray.load(tiny_model_dir)
    assert len(model.labels) == 18


def test_no_decoder_is_stated(tiny_model_dir):
    model = ctxray.load(tiny_model_dir)
    with pytest.raises(NoDecoderError, match="--decoder"):
        model.generate_report(synthetic_ct(), spacing=(9.0, 8.0, 8.0))


def test_array_input_needs_spacing(tiny_model_dir):
    model = ctxray.load(tiny_model_dir)
    with pytest.raises(ValueError, match="spacing"):
        model.embed_volume(synthetic_ct())
    with pytest.raises(ValueError, match=r"\(D, H, W\)"):
        model.embed_volume(np.zeros((4, 4)), spacing=(1, 1, 1))


def _generator_folder(run, dest):
    """A (random-weight) report generator folder as ``ctxray generate train`` writes it."""
    from ctxray.generate.decoder import DecoderConfig, ReportDecoder
    from ctxray.generate.search import DecodeConfig
    from ctxray.generate.train import GenerateConfig, load_encoder, save_generator
    from ctxray.train.checkpoint import load_model

    encoder, tok, desc = load_encoder(run)
    dcfg = DecoderConfig(layers=1, heads=2, width=32, max_length=24, visual_grid=(1, 2, 2),
                         visual_dim=encoder.feature_dim, vocab_size=tok.vocab_size, bos_id=tok.cls_id,
                         eos_id=tok.sep_id, pad_id=tok.pad_id)
    torch.manual_seed(0)
    cfg = GenerateConfig(decoder=dcfg, decode=DecodeConfig(num_beams=1, max_new_tokens=8, min_new_tokens=2))
    _, _, train_cfg = load_model(run)
    save_generator(dest, ReportDecoder(dcfg).eval(), encoder, desc, tok, cfg,
                   Path(train_cfg.data.cache) / "spec.json")
    return dest


def test_export_with_decoder_generates_reports(tiny_run, tmp_path):
    gen = _generator_folder(tiny_run, tmp_path / "G")
    out = export_model(tiny_run, tmp_path / "m", decoder=gen)
    assert "decoder/model.safetensors" in json.loads((out / "manifest.json").read_text())["files"]
    model = ctxray.load(out)
    hu = synthetic_ct()
    text = model.generate_report(hu, spacing=(9.0, 8.0, 8.0))
    assert isinstance(text, str) and text.strip()
    assert model.generate_report(hu, spacing=(9.0, 8.0, 8.0)) == text  # deterministic
    from ctxray.inference.report import report_writer

    assert report_writer(out / "decoder")(model.preprocess(hu, (9.0, 8.0, 8.0))) == text  # what the API wraps
    # a generator trained on another preprocessing spec is refused, and nothing is written
    from ctxray.data.spec import get_preset

    get_preset("demo").save(gen / "spec.json")
    with pytest.raises(ValueError, match="spec"):
        export_model(tiny_run, tmp_path / "m2", decoder=gen)
    assert not (tmp_path / "m2").exists()
