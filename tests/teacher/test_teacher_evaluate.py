"""The expert's own scores: report -> image recall (tie-aware) and zero-shot AUC with the shared ensembles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctxray.labels import load_labels
from ctxray.teacher.base import Teacher
from ctxray.teacher.evaluate import report_to_image_recall, zero_shot_auc


def test_recall_counts_identical_images_as_ties_not_hits():
    img = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)  # images 0 and 1 identical
    out = report_to_image_recall(img.clone(), img, ["a", "a", "b"], ks=(1, 2))
    assert out["instance"]["R@1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)  # a coin flip for each twin
    assert out["instance"]["R@2"] == 1.0
    assert out["same_report"]["R@1"] == 1.0  # either twin has the query's report text
    assert out["chance"]["R@1"] == pytest.approx(1 / 3)


class _LabelTeacher(Teacher):
    """Text embedding = one axis per label name found in the prompt, negated when the prompt negates."""

    name = "label-toy"
    image_size = 8
    embed_dim = 18

    def encode_text(self, texts):
        names = load_labels().names
        out = torch.zeros(len(texts), self.embed_dim)
        for i, t in enumerate(texts):
            for j, n in enumerate(names):
                if n.lower() in t.lower():
                    out[i, j] = -1.0 if t.lower().startswith("no ") else 1.0
        return out + 1e-3

    def encode_image(self, images):
        raise NotImplementedError

    def fingerprint(self) -> str:
        return "toy"


def test_zero_shot_auc_is_perfect_when_images_point_at_their_labels():
    label_set = load_labels()
    names = ["Cardiomegaly", "Pleural effusion"]
    y = np.zeros((6, len(label_set)), np.float32)
    y[:3, label_set.index("Cardiomegaly")] = 1
    y[[0, 3], label_set.index("Pleural effusion")] = 1
    img = F.normalize(torch.from_numpy(2 * y - 1), dim=-1)
    out = zero_shot_auc(_LabelTeacher(), img, y, label_set, names)
    assert out["Cardiomegaly"] == 1.0 and out["Pleural effusion"] == 1.0 and out["macro"] == 1.0
