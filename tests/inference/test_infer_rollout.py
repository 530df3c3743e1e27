"""Attention rollout's parts: finding the ViT, factorised attention laid out over all tokens, and a plain
rollout that is a distribution over tokens whatever score it is asked about."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ctxray.inference.rollout import _full, attention_encoder, rollout
from ctxray.models.registry import create_volume_encoder

SHAPE = (16, 32, 32)


def _vit(name: str = "vit3d_tiny", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_volume_encoder(name, input_shape=SHAPE, patch_size=(4, 8, 8), **kwargs).eval()


def test_the_vit_is_found_in_a_wrapper_and_a_resnet_is_refused():
    vit = _vit()
    wrapper = nn.Module()
    wrapper.volume_encoder = vit
    assert attention_encoder(wrapper) is vit and attention_encoder(vit) is vit
    with pytest.raises(ValueError, match="gradcam"):
        attention_encoder(create_volume_encoder("resnet3d_tiny", input_shape=SHAPE))


@pytest.mark.parametrize("axis", ["spatial", "temporal"])
def test_factorised_attention_is_zero_between_tokens_that_do_not_attend(axis):
    grid = (2, 2, 3)  # 2 slices of 6 tokens
    block = nn.Module()
    block.axis = axis
    seqs, n = (2, 6) if axis == "spatial" else (6, 2)
    attn = torch.softmax(torch.randn(seqs, 3, n, n), dim=-1)  # (sequences, heads, n, n)
    full = _full(block, attn, grid)  # (heads, 12, 12)
    assert full.shape == (3, 12, 12)
    torch.testing.assert_close(full.sum(-1), torch.ones(3, 12))  # each row still a distribution
    z, pos = torch.arange(12) // 6, torch.arange(12) % 6
    linked = (z[:, None] == z[None, :]) if axis == "spatial" else (pos[:, None] == pos[None, :])
    assert (full[:, ~linked] == 0).all() and (full[:, linked] > 0).all()


@pytest.mark.parametrize("name,kwargs", [("vit3d_tiny", {}), ("vit3d_tiny", {"pool": "cls"}),
                                         ("vit3d_axial_tiny", {})])
def test_plain_rollout_is_the_same_for_any_score(name, kwargs):
    enc = _vit(name, **kwargs)
    x = torch.rand(1, 1, *SHAPE)
    a, text, _, grid = rollout(enc, x, lambda v: enc(v)[:, 0], weighted=False)
    b, _, _, _ = rollout(enc, x, lambda v: -enc(v)[:, 1], weighted=False)
    assert a.shape == (1, 1, *SHAPE) and grid == (4, 4, 4)
    torch.testing.assert_close(a, b)
    assert (a >= 0).all() and a.sum() > 0 and "4x4x4" in text
    assert all(block.attn.attention is None and not block.attn.keep_attention for block in enc.blocks)  # restored
