"""The prompt-anchored label loss reads the shared space exactly as zero-shot evaluation does."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ctxray.labels import load_labels
from ctxray.models.text import Tokenizer
from ctxray.models.zeroshot import prompt_ensembles, zero_shot_logits
from ctxray.teacher.builtin import BuiltinTeacher, XrayCLIP
from ctxray.teacher.embed import embed_texts
from ctxray.teacher.prompts import PromptAnchors
from ctxray.teacher.train import preset, tokenize_reports


def _teacher() -> BuiltinTeacher:
    label_set = load_labels()
    names = label_set.xray_visible_names
    texts = [p for n in names for p in sum(label_set.prompts(n), [])]
    tokenizer = Tokenizer.train(texts, vocab_size=300)
    cfg = preset("tiny").model
    cfg = replace(cfg, text=replace(cfg.text, vocab_size=tokenizer.vocab_size, dropout=0.0), label_names=names)
    torch.manual_seed(0)
    return BuiltinTeacher(XrayCLIP(cfg), tokenizer).freeze()


def test_anchor_directions_and_logits_are_the_zero_shot_ones() -> None:
    teacher = _teacher()
    label_set, names = load_labels(), teacher.model.cfg.label_names
    anchors = PromptAnchors(label_set, names, init_scale=7.0)
    with torch.no_grad():
        anchors.bias.copy_(torch.linspace(-1, 1, len(names)))
        enc = tokenize_reports(teacher.tokenizer, anchors.prompts, teacher.max_length)
        text = teacher.model.encode_text(enc["input_ids"], enc["attention_mask"])
        pos, neg = anchors.directions(text)
        ref_pos, ref_neg = prompt_ensembles(lambda t: embed_texts(teacher, t), label_set, names)
        assert torch.allclose(pos, ref_pos, atol=1e-5) and torch.allclose(neg, ref_neg, atol=1e-5)
        image = F.normalize(torch.randn(5, teacher.embed_dim), dim=-1)
        expected = zero_shot_logits(image, ref_pos, ref_neg, 7.0) + anchors.bias
        assert torch.allclose(anchors(image, text), expected, atol=1e-4)


def test_prompt_loss_trains_the_text_projection_and_the_image_side() -> None:
    """Gradients reach the text projection (the prompts' side) and the image embedding."""
    teacher = _teacher()
    model = teacher.model
    model.requires_grad_(True)
    anchors = PromptAnchors(load_labels(), model.cfg.label_names)
    enc = tokenize_reports(teacher.tokenizer, anchors.prompts, teacher.max_length)
    image = F.normalize(torch.randn(4, model.cfg.embed_dim, requires_grad=True), dim=-1)
    logits = anchors(image, model.encode_text(enc["input_ids"], enc["attention_mask"]))
    F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)).backward()
    assert model.text_proj.weight.grad is not None and model.text_proj.weight.grad.abs().sum() > 0
    assert anchors.log_scale.grad is not None and anchors.bias.grad is not None
