"""The 3D ResNet: each norm kind builds and runs, thick-slice stems keep depth, the feature map's grid."""

from __future__ import annotations

import pytest
import torch

from ctxray.models.resnet3d import ResNet3D, resnet3d_tiny


@pytest.mark.parametrize("norm", ["group", "batch", "instance"])
def test_norms_build_and_give_the_pooled_feature_map(norm):
    torch.manual_seed(0)
    enc = resnet3d_tiny(input_shape=(32, 32, 32), stem_stride=1, norm=norm).eval()  # grid 32 / 16 = 2
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        fmap, out = enc.feature_map(x), enc(x)
    assert fmap.shape == (2, 64, 2, 2, 2) and out.shape == (2, enc.out_dim)
    torch.testing.assert_close(out, fmap.mean(dim=(2, 3, 4)))


def test_instance_norm_on_a_one_voxel_feature_map_is_refused():
    with pytest.raises(ValueError, match="norm='instance' needs more than one voxel"):
        resnet3d_tiny(input_shape=(16, 32, 32), norm="instance")


def test_a_thick_slice_stem_keeps_twice_the_depth():
    enc = ResNet3D(input_shape=(16, 32, 32), layers=(1, 1), widths=(8, 16), stem_stride=(1, 2, 2)).eval()
    with torch.no_grad():
        fmap = enc.feature_map(torch.rand(1, 1, 16, 32, 32))
    assert fmap.shape[2:] == (4, 4, 4)  # depth: 16 / (1 * 2 * 2); height and width: 32 / (2 * 2 * 2)
