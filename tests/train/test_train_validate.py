"""Validation's contrastive loss is plain InfoNCE over batch-sized chunks (comparable across corrections)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ctxray.losses import RobustContrastiveLoss
from ctxray.train.validate import clip_loss_in_chunks


def test_chunked_loss_is_the_mean_of_plain_infonce_per_chunk():
    gen = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(10, 8, generator=gen), dim=-1)
    t = F.normalize(torch.randn(10, 8, generator=gen), dim=-1)
    plain = RobustContrastiveLoss("none")
    want = (float(plain(v[:4], t[:4], 5.0)) + float(plain(v[4:8], t[4:8], 5.0)) + float(plain(v[8:], t[8:], 5.0))) / 3
    assert math.isclose(clip_loss_in_chunks(v, t, 5.0, chunk=4), want, rel_tol=1e-6)
    assert math.isclose(clip_loss_in_chunks(v, v, 0.0, chunk=10), math.log(10), rel_tol=1e-6)  # scale 0: log(B)
    assert math.isnan(clip_loss_in_chunks(v[:1], t[:1], 5.0, chunk=4))  # no chunk of two pairs
