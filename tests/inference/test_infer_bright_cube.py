"""The bright-cube test of the explanation pipeline (issue 14).

A scan holds one bright cube; the model's score is the mean intensity of a region of its model-grid
input (computed from a staged encoder, so CAMs are hooked where ``ResNet3D`` is hooked). Every method's
map, read through ``CTModel.explain`` (reader -> ``spec.apply`` -> method -> ``spec.invert``), must point
into the cube on the scan's own grid, for a NIfTI in axial RAS and for a DICOM series whose slices
descend (head first) with LPS rows and columns; for DICOM the point is also checked in patient
coordinates (LPS mm, from how the files were written, independent of the reader's affine).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ctxray.data.spec import PreprocessSpec
from ctxray.inference.api import CTModel
from ctxray.inference.heatmap import ATTENTION_METHODS, METHODS, explain
from ctxray.inference.pointing import map_point
from ctxray.labels import load_labels

from .infer_helpers import write_dicom_series, write_nifti

SPEC = PreprocessSpec("cube", spacing_zyx=(4.0, 4.0, 4.0), shape_zyx=(16, 32, 32), hu_min=-1000, hu_max=1000)
SHAPE, SPACING = (30, 60, 50), (3.0, 2.0, 2.5)  # 90 x 120 x 125 mm; the model sees 64 x 128 x 128 mm
CUBE = (slice(9, 16), slice(34, 44), slice(12, 20))  # 21 x 20 x 20 mm, off-centre, inside the model's view


class StagedPools(nn.Module):
    """An encoder with stages like ``ResNet3D``: stem = 2x average pool, stage 1 = another (two channels:
    the intensity and a constant)."""

    explain_stage = 1

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.AvgPool3d(2)
        self.stage1 = nn.AvgPool3d(2)

    def feature_module(self, stage):
        return self.stem if stage == 0 else self.stage1

    def stage_grid(self, shape, stage):
        f = 2 if stage == 0 else 4
        return tuple(s // f for s in shape)

    def stage_channels(self, stage):
        return 2

    def feature_map(self, x, stage=1):
        f = self.stem(torch.cat([x, torch.ones_like(x)], dim=1))
        return f if stage == 0 else self.stage1(f)


class RegionMean(nn.Module):
    """Score = mean intensity of the model input inside ``box`` (model voxels; None: everywhere), read from
    stage-1 features; the embedding is (score, 0) so that the direction e0 - e1 gives the score."""

    def __init__(self, box: tuple[slice, slice, slice] | None = None) -> None:
        super().__init__()
        self.volume_encoder = StagedPools()
        self.box = box

    def scale(self):
        return torch.tensor(10.0)

    def encode_volume(self, x):
        f = self.volume_encoder.feature_map(x, 1)[:, :1]  # (B, 1, D/4, H/4, W/4)
        if self.box is not None:
            f = f[(slice(None), slice(None), *(slice(s.start // 4, s.stop // 4) for s in self.box))]
        m = f.mean(dim=(1, 2, 3, 4))
        return torch.stack([m, torch.zeros_like(m)], dim=1)


def _ct_model(net: nn.Module) -> CTModel:
    labels = load_labels()
    model = CTModel(net, tokenizer=None, spec=SPEC, label_set=labels, thresholds={})
    e = torch.zeros(len(labels), 2)
    model._prompts = (e.clone(), e.clone())
    model._prompts[0][:, 0], model._prompts[1][:, 1] = 1.0, 1.0  # every label's pos - neg = e0 - e1
    return model


def _cube_scan() -> np.ndarray:
    hu = np.full(SHAPE, -900.0, np.float32)
    hu[CUBE] = 700.0
    return hu


def _in_cube(point, margin_vox=(0.0, 0.0, 0.0)) -> bool:
    return all(s.start - 0.5 - m <= p <= s.stop - 0.5 + m for p, s, m in zip(point, CUBE, margin_vox))


class AttendToBright(nn.Module):
    """A hand-set one-block ViT (patch 4^3: a 4x8x8 token grid of 16 mm cells) whose tokens attend to the
    brightest patches: channel 0 of a token is its patch's mean, channel 1 a constant; query = 40 x channel 1,
    key = channel 0, so attention goes to bright keys; value = channel 0 written to channel 2; no norms, no
    MLP. Score = channel 2 averaged over the tokens (mean pooling) = an attention-weighted mean brightness."""

    def __init__(self) -> None:
        super().__init__()
        from ctxray.models.vit3d import ViT3D

        enc = ViT3D(input_shape=SPEC.shape_zyx, patch_size=4, embed_dim=6, depth=1, num_heads=1)
        with torch.no_grad():
            for p in enc.parameters():
                p.zero_()
            enc.patch_embed.weight[0] = 1.0 / 64
            enc.patch_embed.bias[1] = 1.0
            block = enc.blocks[0]
            block.norm1 = block.norm2 = enc.norm = nn.Identity()
            qkv = block.attn.qkv.weight  # (18, 6): rows q 0-5, k 6-11, v 12-17
            qkv[0, 1], qkv[6, 0], qkv[12 + 2, 0] = 40.0, 1.0, 1.0
            block.attn.proj.weight.copy_(torch.eye(6))
        self.volume_encoder = enc

    def scale(self):
        return torch.tensor(10.0)

    def encode_volume(self, x):
        m = self.volume_encoder.feature_map(x)[:, 2].mean(dim=(1, 2, 3))
        return torch.stack([m, torch.zeros_like(m)], dim=1)


CASES = [(m, RegionMean) for m in METHODS if m not in ATTENTION_METHODS] + [
    (m, AttendToBright) for m in ATTENTION_METHODS]


@pytest.mark.parametrize("fmt", ["nifti", "dicom_descending"])
@pytest.mark.parametrize(("method", "net"), CASES, ids=[m for m, _ in CASES])
def test_bright_cube_points_into_the_cube(tmp_path, method, net, fmt):
    hu = _cube_scan()
    if fmt == "nifti":
        path = tmp_path / "cube.nii.gz"
        write_nifti(path, hu, SPACING)
    else:
        path = tmp_path / "dicom"
        # file and instance order head to feet (z descending), stored values = HU (slope 1)
        bottom = (60.0, 40.0, 120.0 - (SHAPE[0] - 1) * SPACING[0])  # LPS of RAS slice 0's first pixel
        top = write_dicom_series(path, hu, SPACING, descending=True, origin=bottom, rescale=(1.0, 0.0))
    model = _ct_model(net())
    vol = model.read(path)
    np.testing.assert_allclose(vol.hu, hu)  # the reader gives the RAS array back
    heat = model.explain(path, "Lung nodule", method=method)
    assert heat.shape == SHAPE and heat.max() == pytest.approx(1.0)
    point = map_point(heat)
    # within the cube, up to half a stage-1 cell or token (8 mm) of the feature grid
    margin = tuple(8.0 / s for s in SPACING) if method != "occlusion" else (0.0, 0.0, 0.0)
    assert _in_cube(point, margin), (method, fmt, point, CUBE)
    # the map is high on the cube and low far from it
    assert heat[CUBE].mean() > 2 * heat[:, :10, :].mean()
    if fmt == "dicom_descending":
        # patient coordinates: the reader's affine (RAS) against the LPS position the files were written with
        d, h, w = SHAPE
        ras = vol.affine @ np.array([point[2], point[1], point[0], 1.0])
        k, r, c = d - 1 - point[0], h - 1 - point[1], w - 1 - point[2]  # file slice, row, column
        lps = top + np.array([c * SPACING[2], r * SPACING[1], -k * SPACING[0]])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-3)


@pytest.mark.parametrize("method", ["hirescam", "occlusion"])
def test_spatially_faithful_methods_ignore_a_decoy(method):
    """Two equal bright cubes, the score reads only the first one's region: HiResCAM and occlusion point
    at it. (Grad-CAM weighs a channel by its mean gradient, so it cannot tell the two apart: documented.)"""
    x = torch.full((1, 1, 16, 32, 32), 0.05)
    x[0, 0, 4:8, 4:12, 4:12] = 0.9
    x[0, 0, 8:12, 20:28, 20:28] = 0.9  # the decoy
    net = RegionMean(box=(slice(0, 8), slice(0, 16), slice(0, 16)))
    rel = explain(net, x, lambda v: net.encode_volume(v)[:, 0], method)
    point = map_point(rel.map)
    assert 3.5 <= point[0] <= 8 and 3.5 <= point[1] <= 12 and 3.5 <= point[2] <= 12, point
    assert rel.map[8:12, 20:28, 20:28].max() < 0.2


def test_gradcam_sign_a_score_that_falls_with_the_cube_gives_no_map_there():
    """Negative evidence is removed by the ReLU: a score that decreases with intensity does not light the cube."""
    x = torch.full((1, 1, 16, 32, 32), 0.05)
    x[0, 0, 4:8, 4:12, 4:12] = 0.9
    net = RegionMean()
    for method in ("gradcam", "hirescam"):
        rel = explain(net, x, lambda v: -net.encode_volume(v)[:, 0], method)
        assert float(rel.map[4:8, 4:12, 4:12].max()) < 1e-6


def test_feature_stage_is_the_one_named():
    """The CAM is computed on the stage the encoder names: its grid is reported."""
    x = torch.rand(1, 1, 16, 32, 32)
    net = RegionMean()
    score = lambda v: net.encode_volume(v)[:, 0]  # noqa: E731
    assert explain(net, x, score, "gradcam", stage=0).grid == (8, 16, 16)
    assert explain(net, x, score, "gradcam").grid == (4, 8, 8)  # the encoder's explain_stage
    with pytest.raises(ValueError, match="unknown explanation method"):
        explain(net, x, score, "saliency")  # type: ignore[arg-type]


def test_rollout_needs_a_vit():
    x = torch.rand(1, 1, 16, 32, 32)
    net = RegionMean()
    with pytest.raises(ValueError, match="needs a ViT encoder"):
        explain(net, x, lambda v: net.encode_volume(v)[:, 0], "gradrollout")


def test_plain_rollout_ignores_the_score_gradient_weighted_follows_its_sign():
    """Rollout shows where the encoder attends whatever the label; the gradient-weighted variant of a score
    that falls with the bright patch's brightness has no positive evidence there."""
    x = torch.full((1, 1, 16, 32, 32), 0.05)
    x[0, 0, 4:8, 8:12, 20:24] = 0.9
    net = AttendToBright()
    up = lambda v: net.encode_volume(v)[:, 0]  # noqa: E731
    down = lambda v: -net.encode_volume(v)[:, 0]  # noqa: E731
    np.testing.assert_allclose(explain(net, x, up, "rollout").map, explain(net, x, down, "rollout").map)
    rel = explain(net, x, up, "gradrollout")
    assert rel.grid == (4, 8, 8) and rel.map[5:7, 9:11, 21:23].min() > 0.5 and rel.map[:, :, :12].max() < 0.1
    assert float(explain(net, x, down, "gradrollout").map.max()) == 0.0


def test_occlusion_with_a_blurred_fill_points_at_the_cube_and_ignores_uniform_tissue():
    """Filling the patch with a smoothed copy removes the cube's contrast (the score drops there) but changes
    nothing in uniform tissue, where an air fill would make every patch look relevant to a score that
    falls with darkness."""
    x = torch.full((1, 1, 16, 32, 32), 0.5)
    x[0, 0, 4:8, 20:28, 4:12] = 0.95
    net = RegionMean()
    contrast = lambda v: net.encode_volume(v * (v > 0.7))[:, 0]  # noqa: E731  (reads only bright voxels)
    rel = explain(net, x, contrast, "occlusion", baseline="blur")
    point = map_point(rel.map)
    assert 3.5 <= point[0] <= 8 and 19.5 <= point[1] <= 28 and 3.5 <= point[2] <= 12, point
    flat = explain(net, torch.full((1, 1, 16, 32, 32), 0.5), lambda v: net.encode_volume(v)[:, 0], "occlusion",
                   baseline="blur")
    assert float(flat.map.max()) == 0.0
