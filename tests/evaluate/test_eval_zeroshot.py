"""Zero-shot prompt ensembles and probabilities, with a toy model of known embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctxray.metrics import auroc_per_label, binary_metrics, youden_thresholds
from ctxray.models.zeroshot import (
    encode_texts,
    logit_scale_of,
    prompt_embeddings,
    zero_shot_logits,
    zero_shot_probs,
)


def test_prompt_embeddings_are_per_label_ensemble_means(label_set, toy_model):
    model, tok = toy_model
    pos, neg = prompt_embeddings(model, tok, label_set)
    assert pos.shape == neg.shape == (len(label_set), model.dim)
    torch.testing.assert_close(pos.norm(dim=-1), torch.ones(len(label_set)))
    for j, name in enumerate(label_set.names):
        p_texts, n_texts = label_set.prompts(name)
        want_p = F.normalize(torch.stack([F.normalize(model.prompt_table[t], dim=0) for t in p_texts]).mean(0), dim=0)
        want_n = F.normalize(torch.stack([F.normalize(model.prompt_table[t], dim=0) for t in n_texts]).mean(0), dim=0)
        torch.testing.assert_close(pos[j], want_p)
        torch.testing.assert_close(neg[j], want_n)
        # the right label's direction dominates (catches a label-order mix-up)
        assert int(pos[j].argmax()) == j and int(neg[j].argmax()) == len(label_set) + j


def test_prompt_embeddings_keep_train_mode_and_no_grad(label_set, toy_model):
    model, tok = toy_model
    model.train()
    pos, _ = prompt_embeddings(model, tok, label_set)
    assert model.training and not pos.requires_grad
    model.eval()
    prompt_embeddings(model, tok, label_set)
    assert not model.training


def test_encode_texts_batches_consistently(label_set, toy_model):
    model, tok = toy_model
    texts = label_set.prompts(label_set.names[0])[0] * 3
    torch.testing.assert_close(encode_texts(model, tok, texts, batch_size=2), encode_texts(model, tok, texts))


def test_zero_shot_probs_is_two_way_softmax():
    torch.manual_seed(0)
    v = F.normalize(torch.randn(6, 8), dim=-1)
    pos, neg = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    probs = zero_shot_probs(v, pos, neg, 10.0)
    ref = torch.softmax(torch.stack([10 * v @ pos.T, 10 * v @ neg.T], -1), -1)[..., 0]
    torch.testing.assert_close(probs, ref)
    assert probs.shape == (6, 3)
    # ranking per label does not depend on the scale
    low = zero_shot_probs(v, pos, neg, 0.5)
    assert (probs.argsort(0) == low.argsort(0)).all()
    with pytest.raises(ValueError, match="shapes"):
        zero_shot_logits(v, pos, neg[:2], 1.0)


def test_toy_model_with_coinciding_embeddings_classifies_perfectly(label_set, toy_model, toy_helpers):
    model, tok = toy_model
    rng = np.random.default_rng(0)
    y = (rng.random((40, len(label_set))) < 0.3).astype(np.float32)
    y[0], y[1] = 0, 1  # every label has both classes
    volumes = torch.stack([toy_helpers.volume(row) for row in y])  # (N, 1, D, H, W)
    with torch.no_grad():
        v = model.encode_volume(volumes)
    t = encode_texts(model, tok, [toy_helpers.report_for(row) for row in y])
    torch.testing.assert_close(v, t)  # text and volume embeddings coincide
    pos, neg = prompt_embeddings(model, tok, label_set)
    probs = zero_shot_probs(v, pos, neg, logit_scale_of(model)).numpy()
    np.testing.assert_array_equal(auroc_per_label(y, probs), np.ones(len(label_set)))
    m = binary_metrics(y, probs, youden_thresholds(y, probs))
    np.testing.assert_array_equal(m["f1"], np.ones(len(label_set)))
    # and the 0.5 rule agrees: positives are above, negatives below
    assert ((probs > 0.5) == (y == 1)).all()


def test_logit_scale_of_both_conventions(toy_model):
    model, _ = toy_model
    assert logit_scale_of(model) == pytest.approx(1 / 0.07, rel=1e-5)  # model.scale()

    class OpenClipLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))

    assert logit_scale_of(OpenClipLike()) == pytest.approx(float(np.exp(2.0)), rel=1e-6)
