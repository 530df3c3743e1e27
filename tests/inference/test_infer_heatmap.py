"""Grad-CAM relevance maps: they peak where the evidence is, on the model grid and on the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctxray.data.spec import PreprocessSpec
from ctxray.inference.api import CTModel
from ctxray.inference.heatmap import GRAD_X_INPUT, GRADCAM, gradcam
from ctxray.labels import load_labels

from .infer_helpers import ConvToy


class NoSpatial(ConvToy):
    """Its feature map is not the output of any module (a reshape); Grad-CAM cannot hook it."""

    def volume_feature_map(self, x):
        return (x * 2).reshape(x.shape)[:, :, ::2, ::2, ::2].repeat(1, 4, 1, 1, 1) + 0

    def encode_volume(self, x):
        m = (x * 2).mean(dim=(2, 3, 4))
        return F.normalize(torch.cat([m, -m, m * 0.5, torch.ones_like(m)], 1), dim=-1)


DIRECTION = torch.tensor([1.0, -1.0, 0.0, 0.0])


def _blob(shape, centre, r=2.0):
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    d2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return (d2 <= r * r).astype(np.float32)


@pytest.mark.parametrize("tokens", [False, True])
def test_gradcam_peaks_on_the_evidence(tokens):
    shape, centre = (16, 24, 24), (5, 16, 7)
    x = torch.from_numpy(0.1 + 0.8 * _blob(shape, centre, 2.5))[None, None]
    rel = gradcam(ConvToy(tokens=tokens), x, DIRECTION)
    assert rel.method == GRADCAM
    assert rel.map.shape == shape and rel.map.min() >= 0 and rel.map.max() == pytest.approx(1.0)
    peak = np.unravel_index(rel.map.argmax(), shape)
    assert np.linalg.norm(np.subtract(peak, centre)) <= 2.5
    # the opposite direction scores the bright region down: its map does not peak there
    anti = gradcam(ConvToy(tokens=tokens), x, -DIRECTION).map
    assert anti[centre] < 0.5


def test_gradcam_leaves_model_untouched():
    model = ConvToy()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    gradcam(model, torch.rand(1, 1, 8, 8, 8), DIRECTION)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fallback_when_no_activation_can_be_hooked():
    shape, centre = (16, 16, 16), (8, 4, 10)
    x = torch.from_numpy(0.1 + 0.8 * _blob(shape, centre))[None, None]
    rel = gradcam(NoSpatial(), x, DIRECTION)
    assert rel.method == GRAD_X_INPUT
    assert np.linalg.norm(np.subtract(np.unravel_index(rel.map.argmax(), shape), centre)) <= 2.5


def test_explain_is_aligned_with_the_input_grid():
    """A blob in a scan on another grid than the model's: the map mapped back peaks on the blob."""
    spec = PreprocessSpec("toy", spacing_zyx=(4.0, 4.0, 4.0), shape_zyx=(16, 16, 16), hu_min=-1000, hu_max=1000)
    labels = load_labels()
    model = CTModel(ConvToy(), tokenizer=None, spec=spec, label_set=labels, thresholds={})
    e = torch.zeros(len(labels), 4)
    model._prompts = (e.clone(), e.clone())
    model._prompts[0][:, 0] = 1.0
    model._prompts[1][:, 1] = 1.0  # every label's pos - neg = e0 - e1
    shape, spacing, centre = (30, 50, 40), (3.0, 2.0, 2.5), (6, 38, 10)  # 90x100x100 mm, model sees 64 mm
    hu = np.where(_blob(shape, centre, 3.0) > 0, 800.0, -800.0).astype(np.float32)
    heat = model.explain(hu, "Lung nodule", spacing=spacing)
    assert heat.shape == shape and heat.max() == pytest.approx(1.0)
    peak = np.unravel_index(heat.argmax(), shape)
    dist_mm = np.linalg.norm((np.subtract(peak, centre)) * spacing)
    assert dist_mm <= 8.0, (peak, centre)  # within two model voxels (4 mm each)


def test_method_specs_parse_to_explain_options_and_bad_ones_are_named():
    from ctxray.inference.heatmap import method_spec

    assert method_spec("gradcam") == ("gradcam", {})
    assert method_spec("occlusion:blur") == ("occlusion", {"baseline": "blur"})
    assert method_spec("occlusion:4x8x8") == ("occlusion", {"patch": (4, 8, 8)})
    assert method_spec("hirescam:1") == ("hirescam", {"stage": 1})
    for bad, words in [("saliency", "unknown 'saliency'"), ("gradcam:blur", "takes no option 'blur'"),
                       ("occlusion:0x8x8", "takes no option"), ("rollout:2", "takes no option '2'"),
                       ("occlusion:air", "occlusion:blur")]:
        with pytest.raises(ValueError, match=words):
            method_spec(bad)
