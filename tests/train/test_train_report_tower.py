"""The report tower pre-trained on the reports (``ctxray pretrain-text``): it learns what the prompts mean on
held-out reports (against a control that cannot), and a CT-model run starts from it exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctxray.train.checkpoint import read_report_tower
from ctxray.train.config import ReportTowerConfig
from ctxray.train.report_tower import pretrain_report_tower

from .test_train_support import ACTIVE, tiny_config, write_cache


def _cfg(**kw) -> ReportTowerConfig:
    from ctxray.models.text import TextEncoderConfig

    text = TextEncoderConfig(kind="bert", hidden=32, layers=1, heads=2, max_length=64, dropout=0.0)
    return ReportTowerConfig(**{"text": text, "embed_dim": 32, "steps": 400, "batch_size": 8, "lr": 3e-3,
                                "warmup_steps": 5, "tokenizer_vocab": 300, "log_every": 1000, **kw})


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    root = tmp_path_factory.mktemp("tower")
    cache = write_cache(root / "cache", n_train=40, n_valid=24, seed=3)
    metrics = pretrain_report_tower(cache, root / "tower", _cfg())
    return cache, root / "tower", metrics


def _active(result: dict) -> float:
    """Mean AUROC of the labels the test reports mention (the others never vary)."""
    return float(np.mean(list(result["per_label"].values())[:ACTIVE]))


def test_the_prompts_learn_to_read_held_out_reports(tower):
    _, folder, metrics = tower
    before, after = metrics["prompts_on_reports"]["before"], metrics["prompts_on_reports"]["after"]
    # training seeds 0 / 1 / 2 (world seed 3): 0.781 / 0.755 / 0.766 before, 1.000 / 1.000 / 0.983 after
    assert _active(after["valid"]) > 0.95 and _active(after["valid"]) > _active(before["valid"]) + 0.1
    assert metrics["loss_last10"] < 0.5 * metrics["loss_first10"]
    assert metrics["steps"] == 400 and metrics["reports"] == 40
    assert json.loads((folder / "metrics.json").read_text())["prompts_on_reports"]["after"]["valid"] == after["valid"]
    assert list(after["valid"]["per_label"].values())[ACTIVE:] == [None] * (18 - ACTIVE)  # never positive: no AUROC


def test_labels_of_other_reports_teach_nothing_that_carries_over(tmp_path, monkeypatch):
    """The control: the same stage fitted to a permutation of the reports' labels stays near chance on held-out
    reports (so the figure above comes from the reports' content, not from the stage's set-up)."""
    import ctxray.train.report_tower as rt

    cache = write_cache(tmp_path / "cache", n_train=40, n_valid=24, seed=3)
    real = rt.report_label_table

    def shuffled(rows, label_set, source="labeler", shuffle_seed=None, **kw):
        return real(rows, label_set, source, shuffle_seed=0 if source == "labeler" else None, **kw)

    monkeypatch.setattr(rt, "report_label_table", shuffled)
    metrics = pretrain_report_tower(cache, tmp_path / "tower", _cfg())
    # training seeds 0 / 1 / 2: 0.424 / 0.400 / 0.563 on the held-out reports (1.000 / 1.000 / 0.983 real)
    assert _active(metrics["prompts_on_reports"]["after"]["valid"]) < 0.7


def test_a_run_starts_from_the_pretrained_tower_exactly(tower, tmp_path):
    from ctxray.train.loop import Trainer
    from ctxray.train.runtime import Runtime

    cache, folder, _ = tower
    cfg = tiny_config(cache, None, text_init="pretrained", text_dir=str(folder), **{"model.text.hidden": 64})
    trainer = Trainer(cfg, tmp_path / "run", Runtime(0, 1, torch.device("cpu"), None), resume=False)
    saved_cfg, state = read_report_tower(folder)
    assert trainer.config.model.text == saved_cfg.text  # the tower's settings replace the run's (hidden 64)
    model_state = trainer.model.state_dict()
    for key, value in state.items():
        assert torch.equal(model_state[key], value), key
    assert trainer.tokenizer.vocab_size == saved_cfg.text.vocab_size


def test_a_tower_of_another_width_or_a_missing_folder_is_refused(tower, tmp_path):
    from ctxray.train.loop import train

    cache, folder, _ = tower
    with pytest.raises(ValueError, match="embed_dim"):
        train(tiny_config(cache, None, text_init="pretrained", text_dir=str(folder), **{"model.embed_dim": 64}),
              tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="report-tower folder"):
        train(tiny_config(cache, None, text_init="pretrained", text_dir=str(tmp_path / "nothing")), tmp_path / "r2")
    with pytest.raises(ValueError, match="text_dir"):
        tiny_config(cache, None, text_init="pretrained").check()
    with pytest.raises(ValueError, match="steps"):
        pretrain_report_tower(cache, tmp_path / "t", _cfg(steps=0))


def test_the_cli_writes_the_folder(tower, tmp_path):
    from ctxray.cli import main

    cache, _, _ = tower
    out = tmp_path / "t"
    assert main(["pretrain-text", "--cache", str(cache), "--out", str(out), "--set", "steps=3",
                 "--set", "text.hidden=32", "--set", "text.heads=2", "--set", "text.layers=1",
                 "--set", "text.max_length=64", "--set", "embed_dim=16", "--set", "tokenizer_vocab=300"]) == 0
    cfg, _ = read_report_tower(out)
    assert cfg.steps == 3 and cfg.embed_dim == 16 and cfg.text.vocab_size > 0
    assert main(["pretrain-text", "--cache", str(tmp_path / "none"), "--out", str(out)]) == 2


def test_a_run_from_the_tower_resumes_exactly_without_the_tower_folder(tower, tmp_path):
    """A resumed run reads its own checkpoint (weights and tokenizer), never the tower folder again."""
    import shutil

    from ctxray.train.loop import train

    cache, folder, _ = tower
    moved = tmp_path / "tower"
    shutil.copytree(folder, moved)
    cfg = tiny_config(cache, None, text_init="pretrained", text_dir=str(moved),
                      **{"optim.epochs": 2, "optim.text_lr_scale": 0.1, "data.batch_size": 8})
    full = train(cfg, tmp_path / "full")
    train(cfg, tmp_path / "part", stop_after=3)
    shutil.rmtree(moved)
    rest = train(cfg, tmp_path / "part", resume=True)
    assert rest["step"] == full["step"] == 10
    from safetensors.torch import load_file

    wf = load_file(str(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors"))
    wp = load_file(str(tmp_path / "part" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    # the tower moved at a tenth of the rate, but moved
    _, state = read_report_tower(folder)
    tower_keys = [k for k in state if k.startswith("text_encoder.") and "LayerNorm" not in k]
    assert any(not torch.equal(wf[k], state[k]) for k in tower_keys)


def test_validation_reports_without_labels_are_scored_as_unknown(tmp_path):
    """A cache whose validation rows carry no label columns (unlabelled real data): the stage still runs, and
    the validation figure is None (not NaN in the JSON, not a crash in the log)."""
    cache = write_cache(tmp_path / "cache", n_train=12, n_valid=6, seed=4)
    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]
    for r in rows:
        if r["split"] == "valid":
            r["labels"] = None
    (cache / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = pretrain_report_tower(cache, tmp_path / "tower", _cfg(steps=3))
    assert metrics["prompts_on_reports"]["after"]["valid"]["macro"] is None
    assert metrics["prompts_on_reports"]["after"]["train"]["macro"] is not None
    json.loads((tmp_path / "tower" / "metrics.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    from ctxray.cli import main

    assert main(["pretrain-text", "--cache", str(cache), "--out", str(tmp_path / "t2"), "--set", "steps=2",
                 "--set", "text.hidden=32", "--set", "text.heads=2", "--set", "text.layers=1",
                 "--set", "text.max_length=64", "--set", "embed_dim=16", "--set", "tokenizer_vocab=300"]) == 0


def test_the_side_term_makes_the_tower_read_sides_on_held_out_reports(tmp_path):
    """Without it a report and its side-swapped copy embed alike; with it they part, on reports it never saw."""
    cache = write_cache(tmp_path / "cache", n_train=40, n_valid=24, seed=5)
    manifest = cache / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i, row in enumerate(rows):  # sides on both splits, both ways round
        row["report"] += [" Nodule in the left lung.", " Effusion on the right.", ""][i % 3]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    blind = pretrain_report_tower(cache, tmp_path / "blind", _cfg(steps=150))
    reads = pretrain_report_tower(cache, tmp_path / "reads", _cfg(steps=150, sides=1.0, side_margin=0.5))
    for metrics in (blind, reads):
        assert metrics["prompts_on_reports"]["before"]["valid"]["side_cosine"] > 0.9
    seen, unseen = (m["prompts_on_reports"]["after"]["valid"]["side_cosine"] for m in (reads, blind))
    print(f"held-out side cosine: side term {seen:.3f}, without {unseen:.3f}")
    assert unseen > 0.85 and seen < 0.7
    assert reads["prompts_on_reports"]["after"]["train"]["macro"] > 0.9  # the prompts are still learnt
    with pytest.raises(ValueError, match="side_margin"):
        _cfg(side_margin=1.0).check()
