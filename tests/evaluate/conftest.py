"""Fakes for the evaluation tests: a toy dual encoder whose embeddings are known in closed form.

The toy model gives label j two orthonormal directions, ``pos_j`` and ``neg_j``. A positive prompt of
label j embeds to ``pos_j`` plus a small prompt-specific jitter (so ensemble means are not trivial),
a negative prompt to ``neg_j`` plus jitter. A volume carries its label vector in its first row of
voxels and embeds to ``normalize(sum_j y_j pos_j + (1 - y_j) neg_j)``; a report "labels: 0 1 0 ..."
embeds to the same vector, so text and volume embeddings coincide.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ctxray.labels import LabelSet, load_labels


def report_for(y: list[int] | torch.Tensor) -> str:
    """The toy report of a label vector."""
    return "labels: " + " ".join(str(int(v)) for v in y)


class ToyTokenizer:
    """Maps each distinct text to one id; remembers the text of every id."""

    def __init__(self) -> None:
        self.texts: list[str] = ["<pad>"]
        self.ids: dict[str, int] = {}

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        out = []
        for t in texts:
            if t not in self.ids:
                self.ids[t] = len(self.texts)
                self.texts.append(t)
            out.append([self.ids[t]])
        ids = torch.tensor(out, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


class ToyDualEncoder(torch.nn.Module):
    """A dual encoder with closed-form embeddings (see module docstring)."""

    def __init__(self, label_set: LabelSet, tokenizer: ToyTokenizer, jitter: float = 0.05, seed: int = 0):
        super().__init__()
        n = len(label_set)
        self.n_labels = n
        self.tokenizer = tokenizer
        self.dim = 2 * n + 4
        basis = torch.eye(self.dim)
        self.register_buffer("pos_dirs", basis[:n].clone())
        self.register_buffer("neg_dirs", basis[n:2 * n].clone())
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.weight = torch.nn.Parameter(torch.ones(()))  # a weight so the model has parameters to train
        gen = torch.Generator().manual_seed(seed)
        self.prompt_table: dict[str, torch.Tensor] = {}
        for j, name in enumerate(label_set.names):
            pos, neg = label_set.prompts(name)
            for texts, base in ((pos, self.pos_dirs[j]), (neg, self.neg_dirs[j])):
                for t in texts:
                    self.prompt_table[t] = base + jitter * torch.randn(self.dim, generator=gen)

    def scale(self) -> torch.Tensor:
        """The exponentiated temperature multiplier, as the real DualEncoder exposes it."""
        return self.logit_scale.exp()

    def label_embedding(self, y: torch.Tensor) -> torch.Tensor:
        """(B, L) 0/1 -> (B, E) normalised."""
        y = y.float()
        return F.normalize(y @ self.pos_dirs + (1 - y) @ self.neg_dirs, dim=-1)

    def encode_volume(self, volume: torch.Tensor) -> torch.Tensor:
        y = (volume[:, 0, 0, 0, :self.n_labels] > 0.5).float()  # (B, L)
        return F.normalize(self.label_embedding(y) * self.weight, dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in input_ids[:, 0].tolist():
            text = self.tokenizer.texts[i]
            if text in self.prompt_table:
                rows.append(self.prompt_table[text])
            elif text.startswith("labels: "):
                y = torch.tensor([[float(v) for v in text.split()[1:]]])
                rows.append(self.label_embedding(y)[0])
            else:
                raise KeyError(f"toy model cannot embed {text!r}")
        return F.normalize(torch.stack(rows).to(self.weight.device) * self.weight, dim=-1)


def toy_volume(y: list[int] | torch.Tensor, shape: tuple[int, int, int] = (4, 8, 32)) -> torch.Tensor:
    """A (1, D, H, W) volume in [0, 1] carrying label vector ``y`` in its first voxel row."""
    vol = torch.rand(1, *shape) * 0.4
    y = torch.as_tensor(y, dtype=torch.float32)
    vol[0, 0, 0, :y.numel()] = y
    return vol


@pytest.fixture
def label_set() -> LabelSet:
    return load_labels()


@pytest.fixture
def toy_model(label_set):
    tok = ToyTokenizer()
    return ToyDualEncoder(label_set, tok), tok


@pytest.fixture
def toy_helpers() -> SimpleNamespace:
    """``report_for(y)`` and ``volume(y)`` for tests that build toy data."""
    return SimpleNamespace(report_for=report_for, volume=toy_volume)
