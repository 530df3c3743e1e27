"""A model trained on the tiny world points at a large lesion above chance (issue 14).

``resnet3d_tiny`` (BatchNorm) + a linear head is trained with BCE for 10 epochs on the tiny world's 160
training volumes at the ``tiny`` preset (16x32x32), labels Cardiomegaly, Lung opacity, Consolidation and
Pleural effusion; the map of Cardiomegaly (the heart, the world's largest lesion) by occlusion is judged by
the pointing game (radius + 10 mm) on every ground-truth positive of the world, for seeds 0, 1, 2.

Measured in the experiment that set this test up (same data, model and schedule; 2-core x86_64, 1 thread):
occlusion hit 15/15 Cardiomegaly positives for each of seeds 0, 1, 2 (random point in the body: 0.197);
HiResCAM 0.87 / 0.13 / 0.87 and Grad-CAM 0.13 / 0.47 / 0.00 on those models, which is why the assertion
is on occlusion: the CAMs are not reliable on such a model (README, "Pointing game"). ~20 s per seed;
asserted: every seed >= chance + 0.3, the mean >= chance + 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctxray.data.spec import get_preset
from ctxray.inference.pointing import _stem, collect_cases, pointing_game, read_ground_truth
from ctxray.inference.supervised import ClassifierModel, build_classifier

LABELS = ["Cardiomegaly", "Lung opacity", "Consolidation", "Pleural effusion"]
SEEDS = (0, 1, 2)


def _train(x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = build_classifier("resnet3d_tiny", tuple(x.shape[2:]), y.shape[1], norm="batch")
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(10):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 16):
            idx = order[i:i + 16]
            loss = F.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.mark.slow
def test_occlusion_of_a_trained_model_points_at_the_heart(tiny_world):
    from ctxray.data.readers import read_volume_raw

    spec = get_preset("tiny")
    rows, paths = read_ground_truth(tiny_world)
    vols = [read_volume_raw(paths[_stem(r["VolumeName"])]).to_volume() for r in rows if r["split"] == "train"]
    x = torch.from_numpy(np.stack([spec.apply(v.hu, v.spacing_zyx) for v in vols]))[:, None]  # (N, 1, 16, 32, 32)
    y = torch.tensor([[float(r["labels"][n]) for n in LABELS] for r in rows if r["split"] == "train"])
    positives = [r for r in rows if r["labels"]["Cardiomegaly"]]
    assert len(positives) >= 10
    rates, chance = [], []
    for seed in SEEDS:
        model = ClassifierModel(_train(x, y, seed), LABELS, spec)
        cases, _ = collect_cases(model, positives, paths, require_decision=False, method="occlusion", seed=seed)
        res = pointing_game(cases, margin_mm=10.0)["Cardiomegaly"]
        rates.append(res.rate)
        chance.append(res.body_baseline)
    assert min(r - c for r, c in zip(rates, chance)) >= 0.3, (rates, chance)
    assert np.mean(rates) - np.mean(chance) >= 0.5, (rates, chance)
