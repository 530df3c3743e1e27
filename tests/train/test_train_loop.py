"""The trainer end to end on a tiny cache: determinism, resume, checkpoints, switches, overfitting."""

from __future__ import annotations

import json

import pytest
import torch

from ctxray.train.checkpoint import load_model
from ctxray.train.loop import train

from .test_train_support import tiny_config, write_cache, write_targets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("traindata")
    cache = write_cache(root / "cache", n_train=16, n_valid=8, seed=3)
    return cache, write_targets(root / "retrieval", cache)


def _log(run, kind="train") -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if ("loss" in r) == (kind == "train")]


def _weights(run, which="last") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / which / "model.safetensors"))


def test_same_seed_same_losses_and_weights(data, tmp_path):
    cache, retrieval = data
    cfg = tiny_config(cache, retrieval, **{"optim.epochs": 1})
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    other = train(tiny_config(cache, retrieval, **{"optim.epochs": 1, "seed": 1}), tmp_path / "c")
    assert other["train_loss"] != pytest.approx(float(torch.tensor([r["loss"] for r in a]).mean()), rel=1e-6)


def test_resume_continues_the_same_trajectory(data, tmp_path):
    """Dropout and MLM masking draw random numbers: the RNG states must be restored too."""
    cache, retrieval = data
    cfg = tiny_config(cache, retrieval, **{"model.text.dropout": 0.1, "loss.mlm": 0.5, "optim.epochs": 2})
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", stop_after=3)  # mid-epoch: 4 steps per epoch
    assert part["step"] == 3
    rest = train(cfg, tmp_path / "part", resume=True)
    assert rest["step"] == full["step"] == 8
    wf, wp = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in wf:
        assert torch.equal(wf[k], wp[k]), k
    lf, lp = _log(tmp_path / "full"), _log(tmp_path / "part")
    assert [r["step"] for r in lp] == [r["step"] for r in lf] == list(range(1, 9))  # no duplicated or missing row
    assert [r["mlm"] for r in lp] == [r["mlm"] for r in lf]
    assert [r["val_auroc"] for r in _log(tmp_path / "part", "val")] == [r["val_auroc"] for r in _log(tmp_path / "full",
                                                                                                      "val")]


def test_checkpoint_reloads_to_identical_outputs(data, tmp_path):
    cache, retrieval = data
    cfg = tiny_config(cache, retrieval, **{"optim.epochs": 1})
    train(cfg, tmp_path / "run")
    model, tok, loaded_cfg = load_model(tmp_path / "run", prefer="last")
    again, _, _ = load_model(tmp_path / "run" / "checkpoints" / "last")
    assert loaded_cfg.model.teacher_dim == 16 and loaded_cfg.model.input_shape == (16, 32, 32)
    assert loaded_cfg.code_version["ctxray"]
    vol = torch.rand(2, 1, 16, 32, 32)
    enc = tok(["There is cardiomegaly.", "No evidence of pleural effusion."], max_length=48)
    with torch.no_grad():
        a = model(vol, enc["input_ids"], enc["attention_mask"])
        b = again(vol, enc["input_ids"], enc["attention_mask"])
    for key in ("volume", "text", "kd", "logit_scale"):
        assert torch.equal(a[key], b[key]), key
    assert torch.allclose(a["volume"].norm(dim=1), torch.ones(2), atol=1e-5)
    saved = _weights(tmp_path / "run")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_zero_weight_switches_a_term_off(data, tmp_path):
    cache, retrieval = data
    result = train(tiny_config(cache, retrieval, **{"optim.epochs": 1, "loss.srkd": 0, "loss.pkd": 0}),
                   tmp_path / "run")
    rows = _log(tmp_path / "run")
    assert rows and all("roco" in r and "pkd" not in r and "srkd" not in r for r in rows)
    model, _, cfg = load_model(tmp_path / "run")
    assert model.kd_head is None and cfg.model.teacher_dim is None
    assert result["step"] == 4


def test_bad_configs_raise_clear_errors(data, tmp_path):
    cache, retrieval = data
    with pytest.raises(ValueError, match="data.retrieval"):
        train(tiny_config(cache, None, **{"loss.pkd": 1.0}), tmp_path / "x")
    with pytest.raises(ValueError, match="every weight is 0"):
        train(tiny_config(cache, retrieval, **{"loss.roco": 0, "loss.pkd": 0, "loss.srkd": 0}), tmp_path / "y")
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_config(cache, retrieval, **{"data.batch_size": 64}), tmp_path / "z")
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(tiny_config(cache, retrieval), tmp_path / "never", resume=True)


def test_prompt_term_trains_logs_and_resumes_on_the_same_trajectory(data, tmp_path):
    cache, retrieval = data
    cfg = tiny_config(cache, retrieval, **{"loss.prompt": 0.5, "model.text.dropout": 0.1, "optim.epochs": 2})
    train(cfg, tmp_path / "full")
    rows = _log(tmp_path / "full")
    assert all(r["prompt"] > 0 for r in rows)
    for r in rows:
        assert r["loss"] == pytest.approx(r["roco"] + r["pkd"] + r["srkd"] + 0.5 * r["prompt"], rel=1e-5)
    train(cfg, tmp_path / "part", stop_after=3)
    train(cfg, tmp_path / "part", resume=True)
    wf, wp = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    assert [r["prompt"] for r in _log(tmp_path / "part")] == [r["prompt"] for r in rows]


def test_mirror_pairs_train_log_and_resume_on_the_same_trajectory(tmp_path, caplog):
    """Reports that name a side: half of each batch of 4 is mirrored copies; killed and resumed, the same run."""
    cache = write_cache(tmp_path / "cache", n_train=16, n_valid=4, seed=4)
    manifest = cache / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for i, row in enumerate(rows):  # every other training report names a side
        row["report"] += " Nodule in the right lower lobe." if i % 2 else ""
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    retrieval = write_targets(tmp_path / "retrieval", cache)
    cfg = tiny_config(cache, retrieval, **{"data.mirror_pairs": 0.5, "optim.epochs": 2})
    with caplog.at_level("INFO", logger="ctxray.train.loop"):
        full = train(cfg, tmp_path / "full")
    made = [r["mirrored"] for r in _log(tmp_path / "full")]
    assert len(made) == 8 and all(0 <= m <= 2 for m in made) and sum(made) > 4  # 2 asked for per batch
    assert "pairs per micro-batch were mirrored copies" in caplog.text
    part = train(cfg, tmp_path / "part", stop_after=3)
    rest = train(cfg, tmp_path / "part", resume=True)
    assert part["step"] == 3 and rest["step"] == full["step"] == 8
    assert [r["mirrored"] for r in _log(tmp_path / "part")] == made
    wf, wp = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert all(torch.equal(wf[k], wp[k]) for k in wf)
    plain = train(tiny_config(cache, retrieval, **{"optim.epochs": 1}), tmp_path / "plain")
    assert "mirrored" not in _log(tmp_path / "plain")[0] and plain["step"] == 4
