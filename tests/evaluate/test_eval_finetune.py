"""Linear probe and full fine-tuning with label fractions, on toy encoders of known quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctxray.evaluate.finetune import (
    FinetuneSettings,
    finetune_compare,
    fraction_subset,
    masked_bce,
    summary_rows,
    train_full,
)

N_LABELS = 4


class LabelReader(nn.Module):
    """A 'pretrained' encoder: its features are the voxels that carry the labels (plus noise voxels)."""

    out_dim = 16

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(16))

    def forward(self, x):
        return x[:, 0, 0, 0, :16] * self.w


class Flatten(nn.Module):
    """A trainable encoder over the whole (tiny) volume; random init hides the label voxels."""

    def __init__(self, out_dim: int = 8, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.out_dim = out_dim
        self.lin = nn.Linear(4 * 8 * 32, out_dim)

    def forward(self, x):
        return self.lin(x.flatten(1))


def _items(toy_helpers, n: int, seed: int, prefix: str) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = (rng.random(N_LABELS) < 0.4).astype(np.float32)
        y[i % N_LABELS] = float(i % 2)  # both classes in every label
        out.append({"id": f"{prefix}{i}", "volume": toy_helpers.volume(y), "labels": torch.from_numpy(y)})
    return out


def test_fraction_subsets_are_seeded_sized_and_nested():
    a = fraction_subset(1000, 0.01, seed=3)
    b = fraction_subset(1000, 0.1, seed=3)
    assert len(a) == 10 and len(b) == 100 and set(a) <= set(b)
    np.testing.assert_array_equal(a, fraction_subset(1000, 0.01, seed=3))
    assert not np.array_equal(b, fraction_subset(1000, 0.1, seed=4))
    assert len(fraction_subset(50, 0.001, 0)) == 1 and len(fraction_subset(50, 1.0, 0)) == 50
    with pytest.raises(ValueError, match="fraction"):
        fraction_subset(10, 0.0, 0)


def test_masked_bce_ignores_unknown():
    logits = torch.tensor([[0.0, 5.0]])
    y = torch.tensor([[1.0, float("nan")]])
    assert float(masked_bce(logits, y)) == pytest.approx(np.log(2))


def test_probe_pretrained_beats_scratch_and_keeps_encoder_frozen(toy_helpers):
    train, evals = _items(toy_helpers, 40, 0, "t"), _items(toy_helpers, 30, 1, "v")
    reader, scratch = LabelReader(), Flatten()
    before = {k: v.clone() for k, v in scratch.state_dict().items()}
    res = finetune_compare({"pretrained": reader, "scratch": scratch}, train, evals, list("ABCD"), {}, "probe",
                           [0.25, 1.0], settings=FinetuneSettings(probe_steps=200, n_boot=20))
    full = res["fractions"]["1"]
    assert res["fractions"]["0.25"]["n_train"] == 10 and full["n_train"] == 40
    assert full["pretrained"]["macro"]["auroc"] > 0.95
    assert full["pretrained"]["macro"]["auroc"] > full["scratch"]["macro"]["auroc"] + 0.15
    assert all(torch.equal(before[k], v) for k, v in scratch.state_dict().items())
    rows = summary_rows(res)
    assert len(rows) == 4 and {r["encoder"] for r in rows} == {"pretrained", "scratch"}


def test_full_finetune_learns_and_leaves_the_original_untouched(toy_helpers):
    train, evals = _items(toy_helpers, 48, 2, "t"), _items(toy_helpers, 40, 3, "v")
    enc = Flatten(out_dim=16)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    settings = FinetuneSettings(epochs=25, lr=3e-2, encoder_lr_mult=1.0, batch_size=8, n_boot=0)
    model = train_full(enc, train, N_LABELS, settings, seed=0)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    res = finetune_compare({"scratch": enc}, train, evals, list("ABCD"), {}, "full", [1.0], settings=settings)
    assert res["fractions"]["1"]["scratch"]["macro"]["auroc"] > 0.85
    assert not model.training


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        finetune_compare({}, [], [], [], {}, "linear", [1.0])  # type: ignore[arg-type]
