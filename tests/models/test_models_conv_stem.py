"""Conv stem: its strides multiply to the patch on every axis, the ViTs keep their token grid, every weight learns."""

from __future__ import annotations

import math

import pytest
import torch

from ctxray.models.conv_stem import ConvStem, stem_strides
from ctxray.models.registry import create_volume_encoder


@pytest.mark.parametrize(("patch", "convs", "strides", "last"), [
    ((16, 16, 16), 2, [(2, 2, 2), (2, 2, 2)], (4, 4, 4)),
    ((10, 20, 20), 2, [(2, 2, 2), (1, 2, 2)], (5, 5, 5)),  # CT-CLIP's patch
    ((8, 16, 16), 3, [(2, 2, 2)] * 3, (1, 2, 2)),
    ((3, 4, 4), 3, [(1, 2, 2), (1, 2, 2), (1, 1, 1)], (3, 1, 1)),
    ((4, 8, 8), 0, [], (4, 8, 8)),  # no stem convolutions: the plain patchify convolution's kernel
])
def test_strides_multiply_to_the_patch(patch, convs, strides, last):
    got, left = stem_strides(patch, convs)
    assert (got, left) == (strides, last)
    assert [math.prod(s[a] for s in got) * left[a] for a in range(3)] == list(patch)


def test_stem_output_grid_and_widths():
    stem = ConvStem((10, 20, 20), embed_dim=24, width=4, convs=2)
    out = stem(torch.rand(2, 1, 20, 40, 40))
    assert tuple(out.shape) == (2, 24, 2, 2, 2)
    assert [m.out_channels for m in stem.convs if isinstance(m, torch.nn.Conv3d)] == [4, 8]


@pytest.mark.parametrize("name", ["vit3d_tiny", "vit3d_axial_tiny"])
def test_vit_with_conv_stem_keeps_the_token_grid_and_every_weight_learns(name):
    torch.manual_seed(0)
    shape = (16, 32, 32)
    plain = create_volume_encoder(name, input_shape=shape)
    conv = create_volume_encoder(name, input_shape=shape, stem="conv", stem_width=4)
    x = torch.rand(2, 1, *shape)
    assert conv.feature_map(x).shape == plain.feature_map(x).shape == (2, 48, 2, 2, 2)
    assert isinstance(conv.patch_embed, ConvStem) and conv.stem == "conv"
    conv(x).square().sum().backward()
    assert [n for n, p in conv.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_conv_stem_sees_across_patch_borders():
    """A patchify convolution's token sees only its patch; the conv stem's 3x3x3 kernels reach the next one."""
    shape = (16, 32, 32)  # vit3d_tiny patch 8x16x16 -> 2x2x2 tokens
    for stem, crosses in (("patch", False), ("conv", True)):
        torch.manual_seed(0)
        embed = create_volume_encoder("vit3d_tiny", input_shape=shape, stem=stem, stem_width=4).patch_embed
        x = torch.rand(1, 1, *shape)
        y = x.clone()
        y[0, 0, :, :, 16] += 1.0  # first column of token x=1's patches
        with torch.no_grad():
            diff = (embed(x) - embed(y)).abs().amax(dim=1)[0]  # (gd, gh, gw)
        assert bool((diff[:, :, 0] > 1e-6).any()) is crosses


def test_bad_stem_is_named():
    with pytest.raises(ValueError, match="stem must be 'patch' or 'conv'"):
        create_volume_encoder("vit3d_tiny", input_shape=(16, 32, 32), stem="hybrid")
    with pytest.raises(ValueError, match="width"):
        ConvStem((4, 8, 8), embed_dim=8, width=0)


def test_checkpointing_recomputes_the_stem_with_identical_gradients():
    x = torch.rand(2, 1, 16, 32, 32)
    grads, saved = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = create_volume_encoder("vit3d_axial_tiny", input_shape=(16, 32, 32), stem="conv", stem_width=4,
                                    grad_checkpointing=ckpt)
        stem_out: list[int] = []
        hook = enc.patch_embed.convs[0].register_forward_hook(lambda *_a, seen=stem_out: seen.append(1))
        enc(x).pow(2).sum().backward()
        hook.remove()
        saved.append(len(stem_out))  # forward calls of the first stem convolution: 1, or 2 when recomputed
        grads.append([p.grad.clone() for p in enc.parameters()])
    assert saved == [1, 2]
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-5, rtol=1e-4)


def test_the_registered_conv_variant_has_the_narrow_stem_measured_for_it():
    enc = create_volume_encoder("vit3d_axial_slim_conv", input_shape=(16, 32, 32), patch_size=(8, 16, 16))
    widths = [m.out_channels for m in enc.patch_embed.convs if isinstance(m, torch.nn.Conv3d)]
    assert widths == [8, 16] and enc.patch_embed.proj.out_channels == 192
