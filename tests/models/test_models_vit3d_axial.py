"""Factorised-attention ViT: spatial blocks stay within a slice, temporal blocks along z; 'f' is ViT3D exactly."""

from __future__ import annotations

import pytest
import torch

from ctxray.models.registry import create_volume_encoder
from ctxray.models.vit3d_axial import AxialViT3D

SHAPE = (16, 32, 32)  # patch 4x8x8 -> token grid 4x4x4


def _enc(pattern: str, depth: int = 2, pos: str = "sincos") -> AxialViT3D:
    torch.manual_seed(0)
    kw = dict(input_shape=SHAPE, patch_size=(4, 8, 8), depth=depth, pattern=pattern, pos_embed=pos)
    return create_volume_encoder("vit3d_axial_tiny", **kw).eval()


def _changed(enc: AxialViT3D, region: tuple[slice, ...]) -> torch.Tensor:
    """Which token-grid cells of the feature map change when the input changes only inside ``region``."""
    x = torch.rand(1, 1, *SHAPE, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    y[(0, 0, *region)] += 0.5
    with torch.no_grad():
        diff = (enc.feature_map(x) - enc.feature_map(y)).abs().amax(dim=1)[0]  # (gd, gh, gw)
    return diff > 1e-6


def test_spatial_blocks_keep_each_slice_to_itself():
    changed = _changed(_enc("s"), (slice(4, 8),))  # input depth 4-7 = token slice z=1
    assert changed[1].all() and not changed[[0, 2, 3]].any()


def test_temporal_blocks_keep_each_column_to_itself():
    changed = _changed(_enc("t"), (slice(None), slice(8, 16), slice(0, 8)))  # token column (y=1, x=0)
    assert changed[:, 1, 0].all()
    changed[:, 1, 0] = False
    assert not changed.any()


def test_alternating_blocks_reach_every_token():
    assert _enc("st").block_kinds() == ["spatial", "temporal"]
    assert _changed(_enc("st"), (slice(0, 4), slice(0, 8), slice(0, 8))).all()  # one patch moves the whole grid


def test_full_pattern_is_vit3d_with_the_same_weights():
    axial = _enc("f", pos="learned")
    torch.manual_seed(0)
    plain = create_volume_encoder("vit3d_tiny", input_shape=SHAPE, patch_size=(4, 8, 8), depth=2).eval()
    plain.load_state_dict(axial.state_dict())
    x = torch.rand(2, 1, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(axial(x), plain(x))


def test_same_parameters_as_vit3d_small_and_pooled_equals_mean_of_the_map():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    small = create_volume_encoder("vit3d_small", input_shape=(48, 96, 96))
    axial = create_volume_encoder("vit3d_axial_small", input_shape=(48, 96, 96))
    assert n(small) == n(axial) and axial.block_kinds() == ["spatial", "temporal"] * 3
    enc = _enc("st")
    x = torch.rand(2, 1, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), enc.feature_map(x).mean(dim=(2, 3, 4)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw, match", [(dict(pattern="sx"), "pattern"), (dict(pattern=""), "pattern"),
                                       (dict(pool="cls"), "pool")])  # fmt: skip
def test_bad_configs_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        create_volume_encoder("vit3d_axial_tiny", input_shape=SHAPE, **kw)


def test_slim_is_the_small_factorised_vit_at_half_the_width():
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    kw = dict(input_shape=(100, 200, 200), patch_size=(10, 20, 20))  # CT-CLIP's grid and patch: 1,000 tokens
    small, slim = create_volume_encoder("vit3d_axial_small", **kw), create_volume_encoder("vit3d_axial_slim", **kw)
    assert slim.out_dim == 192 and slim.block_kinds() == small.block_kinds() == ["spatial", "temporal"] * 3
    assert 3.5e6 < n(slim) < 3.8e6 and n(slim) < n(small) / 3  # 3.6 M against 12.6 M
    enc = create_volume_encoder("vit3d_axial_slim", input_shape=(16, 32, 32))
    out = enc(torch.rand(2, 1, 16, 32, 32))
    assert out.shape == (2, 192)
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
