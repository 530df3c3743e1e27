"""A supervised label loss whose classifier is the zero-shot prompts themselves (prompt-anchored labels).

The zero-shot score of a label is ``cos(image, pos) - cos(image, neg)``, with ``pos``/``neg`` the
normalised means of the label's positive and negative prompt embeddings (``ctxray.models.zeroshot``).
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
from ctxray.models.zeroshot import ensemble_directions, prompt_texts


class PromptAnchors(nn.Module):
    """Prompt directions of each label and a learnable scale and bias per label.

    Args:
        label_set: the prompts' source (``label_set.prompts(name)``).
        names: labels, in the order of the label targets.
        init_scale: initial logit scale of the score (scores are differences of cosines, within [-2, 2]).
    """

    def __init__(self, label_set: LabelSet, names: list[str], init_scale: float = 10.0) -> None:
        super().__init__()
        self.prompts, self.counts = prompt_texts(label_set, names)
        self.log_scale = nn.Parameter(torch.tensor(float(init_scale)).log())
        self.bias = nn.Parameter(torch.zeros(len(names)))

    def directions(self, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative ensemble directions from the prompts' text embeddings (in ``self.prompts`` order).

        Shape:
            text_emb: (P, E) unnormalised -> pos (L, E), neg (L, E)
        """
        return ensemble_directions(F.normalize(text_emb, dim=-1), self.counts)

    def forward(self, image: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Per-label logits: scale * (cos(image, pos) - cos(image, neg)) + bias.

        Shape:
            image: (B, E) normalised; text_emb: (P, E) -> (B, L)
        """
        pos, neg = self.directions(text_emb)
        return self.log_scale.exp() * (image @ pos.T - image @ neg.T) + self.bias
