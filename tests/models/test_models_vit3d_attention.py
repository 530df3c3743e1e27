"""Keeping the attention probabilities for rollout changes nothing but where they are kept."""

from __future__ import annotations

import pytest
import torch

from ctxray.models.registry import create_volume_encoder


@pytest.mark.parametrize(("name", "kwargs"), [("vit3d_tiny", {}), ("vit3d_tiny", {"pool": "cls"}),
                                              ("vit3d_axial_tiny", {})])
def test_keep_attention_gives_the_same_output_and_keeps_row_stochastic_weights(name, kwargs):
    torch.manual_seed(0)
    enc = create_volume_encoder(name, input_shape=(16, 32, 32), patch_size=(4, 8, 8), **kwargs).eval()
    x = torch.rand(2, 1, 16, 32, 32)
    with torch.no_grad():
        fused = enc(x)
        for block in enc.blocks:
            block.attn.keep_attention = True
        explicit = enc(x)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    for block in enc.blocks:
        a = block.attn.attention  # (sequences, heads, n, n)
        assert a is not None and a.shape[1] == 3
        torch.testing.assert_close(a.sum(dim=-1), torch.ones(a.shape[:-1]))
