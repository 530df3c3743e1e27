"""Decoder training: a tiny decoder overfits a handful of reports; seeded runs repeat; folders round-trip."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ctxray.generate.data import ReportItem, format_target, most_common_report, split_sections
from ctxray.generate.decoder import DecoderConfig, ReportDecoder
from ctxray.generate.search import DecodeConfig, decode
from ctxray.generate.train import GenerateConfig, tokenize_reports, train_decoder
from ctxray.labels import load_labels

REPORTS = [
    "Small left pleural effusion. impression: left pleural effusion.",
    "Heart size is normal. No effusion. impression: normal chest.",
    "Nodule in the right upper lobe. impression: right lung nodule.",
    "Cardiomegaly and bilateral effusions. impression: cardiomegaly.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from ctxray.models.text import Tokenizer

    return Tokenizer.train(REPORTS * 2, vocab_size=200, min_frequency=1)


def _setup(tokenizer, seed: int = 0, epochs: int = 120):
    torch.manual_seed(123)
    feats = torch.randn(len(REPORTS), 8, 1, 2, 2)  # one distinct fake "CT" per report
    dcfg = DecoderConfig(layers=2, heads=2, width=64, max_length=32, dropout=0.0, visual_grid=(1, 2, 2),
                         visual_dim=8, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.cls_id,
                         eos_id=tokenizer.sep_id, pad_id=tokenizer.pad_id)
    cfg = GenerateConfig(decoder=dcfg, epochs=epochs, batch_size=2, lr=3e-3, warmup_steps=5, seed=seed)
    ids, mask = tokenize_reports(tokenizer, REPORTS, dcfg.max_length)
    torch.manual_seed(seed)
    return ReportDecoder(dcfg), feats, ids, mask, cfg


def test_tiny_decoder_overfits_a_handful_of_reports(tokenizer) -> None:
    dec, feats, ids, mask, cfg = _setup(tokenizer)
    history = train_decoder(dec, feats, ids, mask, cfg)
    assert history[-1]["loss"] < 0.05 < history[0]["loss"]
    for beams in (1, 3):
        out = decode(dec, dec.visual_tokens(feats), DecodeConfig(num_beams=beams, max_new_tokens=30, min_new_tokens=1))
        texts = [tokenizer.decode(o) for o in out]
        want = [tokenizer.decode(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
        assert texts == want  # each image gets its own report back


def test_training_is_deterministic_under_a_seed(tokenizer) -> None:
    runs = []
    for seed in (0, 0, 1):
        dec, feats, ids, mask, cfg = _setup(tokenizer, seed=seed, epochs=3)
        cfg = replace(cfg, decoder=replace(cfg.decoder, dropout=0.1))  # dropout must follow the seed too
        dec = ReportDecoder(cfg.decoder)
        torch.manual_seed(999)  # unrelated global RNG use must not matter
        hist = train_decoder(dec, feats, ids, mask, cfg)
        gen = decode(dec, dec.visual_tokens(feats), DecodeConfig(num_beams=2, max_new_tokens=10))
        runs.append(([h["loss"] for h in hist], gen, [p.detach().clone() for p in dec.parameters()]))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))
    assert runs[0][0] != runs[2][0]


def test_sections_round_trip_and_baseline() -> None:
    assert split_sections(format_target("Lungs clear.", "Normal.")) == ("Lungs clear.", "Normal.")
    assert split_sections("lungs clear . impression : normal .") == ("lungs clear .", "normal .")
    assert split_sections("no marker here") == ("no marker here", "")
    assert format_target("Only findings.", "Not given.") == "Only findings."
    texts = ["No effusion.", "Effusion.", "Lungs clear.", "Nodule.", "Effusion.", "Lungs clear."]
    items = [ReportItem(str(i), "", "", r, None) for i, r in enumerate(texts)]
    # two reconstructions sharing an abnormal report must not beat the normal reports
    assert most_common_report(items, "xray").report == "Lungs clear."
    unique = [ReportItem("b", "", "", "Small pleural effusion.", None), ReportItem("a", "", "", "No effusion.", None),
              ReportItem("c", "", "", "Nodule.", None)]
    assert most_common_report(unique, "xray").id == "a"  # all vectors unique: the normal one wins the tie


# ---- end to end through the CLI: fake training run + fake cache ------------------------------------


def _fake_run_and_cache(root: Path, tokenizer) -> tuple[Path, Path]:
    from ctxray.data.spec import PreprocessSpec
    from ctxray.models.dual import DualEncoder, DualEncoderConfig
    from ctxray.models.text import TextEncoderConfig
    from ctxray.train.checkpoint import save_checkpoint
    from ctxray.train.config import TrainConfig

    shape = (16, 32, 32)
    text = TextEncoderConfig(hidden=32, layers=1, heads=2, max_length=32, vocab_size=tokenizer.vocab_size)
    mcfg = DualEncoderConfig(encoder="vit3d_tiny", input_shape=shape, embed_dim=16, text=text)
    torch.manual_seed(0)
    save_checkpoint(root / "run" / "checkpoints" / "best", DualEncoder(mcfg), tokenizer, TrainConfig(model=mcfg), {})
    cache = root / "cache"
    (cache / "volumes").mkdir(parents=True)
    spec = PreprocessSpec(name="test", spacing_zyx=(2.0, 2.0, 2.0), shape_zyx=shape)
    spec.save(cache / "spec.json")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        vid = f"vol_{i}"
        np.save(cache / "volumes" / f"{vid}.npy", rng.random(shape).astype(np.float16))
        findings, impression = REPORTS[i % 4].split(" impression: ")
        rows.append({"id": vid, "split": "train" if i < 4 else "valid", "report": f"{findings} {impression}",
                     "findings": findings, "impression": impression, "labels": None})
    (cache / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "run", cache


def test_generate_train_and_run_cli(tmp_path, tokenizer, monkeypatch) -> None:
    import nibabel as nib

    from ctxray.cli import main

    monkeypatch.setattr("ctxray.generate.metrics.java_available", lambda: False)  # keep the test fast
    run, cache = _fake_run_and_cache(tmp_path, tokenizer)
    gdir, out = tmp_path / "G", tmp_path / "out"
    sets = ["epochs=2", "decoder.layers=1", "decoder.width=32", "decoder.heads=2", "decoder.visual_grid=[1,2,2]",
            "decode.num_beams=2", "decode.max_new_tokens=12", "batch_size=2"]
    assert main(["generate", "train", "--checkpoint", str(run), "--cache", str(cache), "--out", str(gdir),
                 *[a for s in sets for a in ("--set", s)]]) == 0
    metrics = json.loads((gdir / "metrics.json").read_text())
    assert metrics["n_train"] == 4 and metrics["n_eval"] == 2
    assert metrics["model"]["nlg"]["METEOR"] is None and "BLEU-4" in metrics["trivial_baseline"]["nlg"]
    assert [r["label"] for r in metrics["model"]["clinical"]["per_label"]] == load_labels().names
    samples = [json.loads(x) for x in (gdir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["generated"] for s in samples)

    assert main(["generate", "run", "--model", str(gdir), "--cache", str(cache), "--split", "valid",
                 "--out", str(out), "--beams", "1"]) == 0
    lines = (out / "reports.csv").read_text().splitlines()
    assert lines[0] == "VolumeName,Findings_EN,Impressions_EN" and len(lines) == 3
    assert (out / "metrics.json").is_file()
    rows = [json.loads(x) for x in (out / "reports.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["vol_4", "vol_5"] and all("reference" in r for r in rows)

    nii = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 10), -500, dtype=np.int16), np.diag([2.0, 2.0, 3.0, 1.0])), nii)
    vol_out = tmp_path / "vol_out"
    assert main(["generate", "run", "--model", str(gdir), "--volumes", str(nii), "--out", str(vol_out)]) == 0
    vrows = [json.loads(x) for x in (vol_out / "reports.jsonl").read_text().splitlines()]
    assert [r["id"] for r in vrows] == ["scan"] and not (vol_out / "metrics.json").exists()

    # the folder is self-contained: reloading gives the same decoder and encoder outputs
    from ctxray.generate.train import load_generator

    gen = load_generator(gdir)
    again = tmp_path / "again"
    assert main(["generate", "run", "--model", str(gdir), "--cache", str(cache), "--split", "valid",
                 "--out", str(again), "--beams", "1"]) == 0
    assert (again / "reports.jsonl").read_text() == (out / "reports.jsonl").read_text()
    assert not any(p.requires_grad for p in gen.encoder.parameters()) and not gen.encoder.training


def test_generate_run_needs_exactly_one_input(tmp_path) -> None:
    from ctxray.generate.run import run_generator

    with pytest.raises(ValueError, match="exactly one"):
        run_generator(tmp_path / "G", tmp_path / "o")
