"""Prompt-ensemble zero-shot scoring shared by the X-ray expert and the CT model (any ``encode_text``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ctxray.labels import load_labels
from ctxray.models.zeroshot import ensemble_directions, prompt_ensembles, prompt_texts, zero_shot_logits


def _encoder(dim: int = 16):
    table: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)

    def encode_text(texts: list[str]) -> torch.Tensor:
        for t in texts:
            if t not in table:
                table[t] = F.normalize(torch.randn(dim, generator=gen), dim=0)
        return torch.stack([table[t] for t in texts])

    return encode_text, table


def test_ensembles_are_normalised_means_of_each_labels_prompts() -> None:
    label_set = load_labels()
    names = ["Emphysema", "Cardiomegaly"]
    encode_text, table = _encoder()
    pos, neg = prompt_ensembles(encode_text, label_set, names)
    assert pos.shape == neg.shape == (2, 16)
    for j, name in enumerate(names):
        p, n = label_set.prompts(name)
        torch.testing.assert_close(pos[j], F.normalize(torch.stack([table[t] for t in p]).mean(0), dim=0))
        torch.testing.assert_close(neg[j], F.normalize(torch.stack([table[t] for t in n]).mean(0), dim=0))


def test_directions_are_differentiable_and_the_logit_is_the_scaled_cosine_gap() -> None:
    label_set = load_labels()
    texts, counts = prompt_texts(label_set, ["Lung nodule"])
    emb = F.normalize(torch.randn(len(texts), 8), dim=-1).requires_grad_(True)
    pos, neg = ensemble_directions(emb, counts)
    image = F.normalize(torch.randn(3, 8), dim=-1)
    logits = zero_shot_logits(image, pos, neg, 5.0)
    torch.testing.assert_close(logits, 5.0 * (image @ pos.T - image @ neg.T))
    (image @ pos.T).sum().backward()
    assert emb.grad is not None and emb.grad[: counts[0][0]].abs().sum() > 0  # positives get gradient
    assert emb.grad[counts[0][0]:].abs().sum() == 0  # negatives do not feed the positive direction
