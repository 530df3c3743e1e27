"""The expert's image tower: both stems give the declared width, every parameter learns, bad configs are named."""

from __future__ import annotations

import pytest
import torch

from ctxray.teacher.image import ImageEncoderConfig, XrayImageEncoder


@pytest.mark.parametrize("stem_stride, size", [(2, 64), (4, 128)])
def test_both_stems_give_the_last_width_and_every_parameter_a_gradient(stem_stride, size):
    torch.manual_seed(0)
    enc = XrayImageEncoder(ImageEncoderConfig(widths=(8, 16), stem_width=8, stem_stride=stem_stride))
    out = enc(torch.rand(3, 1, size, size))
    assert out.shape == (3, 16)
    out.square().sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="stem_stride must be 2 or 4"):
        XrayImageEncoder(ImageEncoderConfig(stem_stride=3))
    with pytest.raises(ValueError, match="at least one stage"):
        XrayImageEncoder(ImageEncoderConfig(widths=()))
