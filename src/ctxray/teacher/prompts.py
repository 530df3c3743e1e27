"""A supervised label loss whose classifier is the zero-shot prompts themselves (prompt-anchored labels).

The zero-shot score of a label is ``cos(image, pos) - cos(image, neg)``, with ``pos``/``neg`` the
normalised means of the label's positive and negative prompt embeddings (``ctxray.teacher.evaluate``).
:class:`PromptAnchors` computes exactly these directions from the text tower being trained and turns
the score into a logit, so a binary cross-entropy on the gallery's labels shapes the shared space the way
zero-shot classification reads it (the label queries of KAD-style experts). It uses labels, like the label
head: real chest X-ray experts are trained with labels too. The prompts it sees are the ones zero-shot
evaluation uses, so a held-out prompt wording is the check that the space, not the wording, learnt them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ctxray.labels import LabelSet


class PromptAnchors(nn.Module):
    """Prompt directions of each label and a learnable scale and bias per label.

    Args:
        label_set: the prompts' source (``label_set.prompts(name)``).
        names: labels, in the order of the label targets.
        init_scale: initial logit scale of the score (scores are differences of cosines, within [-2, 2]).
    """

    def __init__(self, label_set: LabelSet, names: list[str], init_scale: float = 10.0) -> None:
        super().__init__()
        self.prompts: list[str] = []
        counts = []
        for name in names:
            pos, neg = label_set.prompts(name)
            self.prompts += pos + neg
            counts.append((len(pos), len(neg)))
        self.counts = counts
        self.log_scale = nn.Parameter(torch.tensor(float(init_scale)).log())
        self.bias = nn.Parameter(torch.zeros(len(names)))

    def directions(self, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative ensemble directions from the prompts' text embeddings (in ``self.prompts`` order).

        Shape:
            text_emb: (P, E) unnormalised -> pos (L, E), neg (L, E)
        """
        t = F.normalize(text_emb, dim=-1)
        pos, neg, i = [], [], 0
        for n_pos, n_neg in self.counts:
            pos.append(F.normalize(t[i:i + n_pos].mean(0), dim=-1))
            neg.append(F.normalize(t[i + n_pos:i + n_pos + n_neg].mean(0), dim=-1))
            i += n_pos + n_neg
        return torch.stack(pos), torch.stack(neg)

    def forward(self, image: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Per-label logits: scale * (cos(image, pos) - cos(image, neg)) + bias.

        Shape:
            image: (B, E) normalised; text_emb: (P, E) -> (B, L)
        """
        pos, neg = self.directions(text_emb)
        return self.log_scale.exp() * (image @ pos.T - image @ neg.T) + self.bias
