"""Volume encoder registry: every encoder builds, has the right shapes, trains every parameter; bad configs fail."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ctxray.models.registry import (
    VolumeEncoder,
    create_volume_encoder,
    list_encoders,
    register_encoder,
)
from ctxray.models.vit3d import ViT3D, sincos_pos_embed_3d

SHAPE = (16, 32, 32)
TINY = list_encoders("*_tiny")


def _tiny(name: str, **kw) -> VolumeEncoder:
    torch.manual_seed(0)
    return create_volume_encoder(name, input_shape=SHAPE, **kw)


def test_registry_lists_required_encoders_and_every_family_has_a_tiny_variant():
    names = list_encoders()
    for required in ("vit3d_tiny", "vit3d_small", "vit3d_base", "resnet3d_tiny", "resnet3d_18"):
        assert required in names
    families = {n.split("_")[0] for n in names}
    assert families == {n.split("_")[0] for n in TINY}
    assert list_encoders("vit3d_*") == sorted(n for n in names if n.startswith("vit3d_"))


@pytest.mark.parametrize("name", list_encoders())
def test_every_registered_encoder_builds_and_encodes(name):
    torch.manual_seed(0)
    enc = create_volume_encoder(name, input_shape=SHAPE).eval()
    assert isinstance(enc, VolumeEncoder) and enc.input_shape == SHAPE
    with torch.no_grad():
        emb = enc(torch.rand(2, 1, *SHAPE))
    assert emb.shape == (2, enc.out_dim) and torch.isfinite(emb).all()


@pytest.mark.parametrize("name", TINY)
def test_tiny_encoder_shapes_and_every_parameter_gets_a_gradient(name):
    enc = _tiny(name)
    x = torch.rand(2, 1, *SHAPE)
    emb = enc(x)
    assert emb.shape == (2, enc.out_dim)
    fmap = enc.feature_map(x)
    assert fmap.dim() == 5 and fmap.shape[:2] == (2, enc.feature_dim)
    # a loss that depends on each sample differently, so that normalisation layers pass gradients on
    (emb * torch.randn_like(emb)).sum().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"{name}: parameters without gradient: {missing}"


@pytest.mark.parametrize("name", TINY)
def test_samples_are_encoded_independently(name):
    """Row i of the output depends only on volume i (no cross-sample leakage, e.g. through BatchNorm)."""
    enc = _tiny(name).eval()
    x = torch.rand(3, 1, *SHAPE)
    with torch.no_grad():
        full = enc(x)
        single = torch.cat([enc(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(full, single, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(full[0], full[1])


@pytest.mark.parametrize("name", TINY)
def test_grad_checkpointing_gives_identical_outputs_and_gradients(name):
    x = torch.rand(2, 1, *SHAPE)
    plain, ckpt = _tiny(name), _tiny(name, grad_checkpointing=True)
    assert ckpt.grad_checkpointing
    grads = []
    for enc in (plain, ckpt):
        enc(x).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in enc.parameters()])
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, atol=1e-5, rtol=1e-4)


def test_vit_feature_map_grid_and_mean_pool_consistency():
    enc = _tiny("vit3d_tiny", patch_size=(4, 8, 8)).eval()
    x = torch.rand(2, 1, *SHAPE)
    with torch.no_grad():
        fmap = enc.feature_map(x)
        emb = enc(x)
    assert fmap.shape == (2, enc.feature_dim, 4, 4, 4)
    torch.testing.assert_close(emb, fmap.mean(dim=(2, 3, 4)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm", ["group", "batch", "instance"])
def test_resnet_norms_and_odd_widths(norm):
    kw = dict(widths=(6, 12, 20, 36), norm=norm, stem_stride=(1, 2, 2))
    enc = create_volume_encoder("resnet3d_tiny", input_shape=(32, 32, 32), **kw)
    x = torch.rand(2, 1, 32, 32, 32)
    assert enc(x).shape == (2, 36)
    assert enc.feature_map(x).shape[2:] == enc.feature_grid((32, 32, 32)) == (2, 1, 1)


def test_resnet_instance_norm_refuses_a_single_voxel_feature_map():
    with pytest.raises(ValueError, match=r"instance.*\(16, 32, 32\)"):
        create_volume_encoder("resnet3d_tiny", input_shape=SHAPE, norm="instance")


@pytest.mark.parametrize("shape", [(32, 64, 64), (33, 70, 100)])
def test_resnet_feature_map_is_downsampled_by_32(shape):
    enc = create_volume_encoder("resnet3d_tiny", input_shape=shape)
    fmap = enc.feature_map(torch.rand(1, 1, *shape))
    assert fmap.shape[:2] == (1, 64) and fmap.shape[2:] == enc.feature_grid(shape)
    assert enc.feature_grid((32, 64, 64)) == (1, 2, 2) and enc.feature_grid((33, 70, 100)) == (2, 3, 4)


@pytest.mark.parametrize("pos", ["learned", "sincos"])
def test_vit_runs_on_other_shapes_by_interpolating_the_position_embedding(pos):
    enc = _tiny("vit3d_tiny", pos_embed=pos).eval()
    with torch.no_grad():
        out = enc.feature_map(torch.rand(1, 1, 24, 48, 64))
    assert out.shape == (1, enc.feature_dim, 3, 3, 4)


def test_learned_position_embedding_interpolation_preserves_a_smooth_field():
    enc = _tiny("vit3d_tiny")
    grid = tuple(enc.pos_grid.tolist())
    # a ramp along depth stays a ramp within the same range after resizing the grid
    lin = torch.linspace(0, 1, grid[0]).view(1, grid[0], 1, 1, 1).expand(1, *grid, enc.out_dim)
    with torch.no_grad():
        enc.pos_embed.copy_(lin.reshape(1, -1, enc.out_dim))
    same = enc._pos_for(grid)
    assert same is enc.pos_embed
    bigger = enc._pos_for((grid[0] * 2, grid[1], grid[2]))
    assert bigger.shape == (1, 2 * grid[0] * grid[1] * grid[2], enc.out_dim)
    assert bigger.min() >= 0 and bigger.max() <= 1
    depth_profile = bigger.reshape(2 * grid[0], grid[1], grid[2], -1)[:, 0, 0, 0]
    assert torch.all(depth_profile.diff() >= 0) and depth_profile[-1] - depth_profile[0] > 0.5


def test_sincos_embedding_is_distinct_per_position():
    emb = sincos_pos_embed_3d((2, 3, 4), 48)
    assert emb.shape == (24, 48)
    assert torch.cdist(emb, emb).add(torch.eye(24)).min() > 0.1


def test_no_weight_decay_names_real_parameters():
    names = dict(_tiny("vit3d_tiny", pool="cls").named_parameters())
    assert _tiny("vit3d_tiny", pool="cls").no_weight_decay() == {"pos_embed", "cls_token"} <= names.keys()
    assert _tiny("vit3d_tiny", pos_embed="sincos").no_weight_decay() == set()
    assert _tiny("resnet3d_tiny").no_weight_decay() == set()


def test_cls_pooling_variant():
    enc = _tiny("vit3d_tiny", pool="cls")
    x = torch.rand(2, 1, *SHAPE)
    assert enc(x).shape == (2, enc.out_dim)
    assert enc.feature_map(x).shape == (2, enc.feature_dim, 2, 2, 2)


def test_bf16_autocast_runs_and_stays_close():
    enc = _tiny("vit3d_tiny").eval()
    x = torch.rand(2, 1, *SHAPE)
    dtypes = []
    enc.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.no_grad():
        ref = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(x)
    assert dtypes == [torch.float32, torch.bfloat16]  # the matmuls really ran in bf16
    assert not torch.equal(ref, low.float())
    assert torch.nn.functional.cosine_similarity(ref, low.float()).min() > 0.99


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("vit3d_tiny", dict(input_shape=(20, 32, 32)), r"\(20, 32, 32\).*patch size \(8, 16, 16\)"),
        ("vit3d_tiny", dict(embed_dim=50, num_heads=3), "embed_dim"),
        ("vit3d_tiny", dict(pos_embed="rope"), "pos_embed"),
        ("vit3d_tiny", dict(patch_size=(8, 16)), "patch_size"),
        ("vit3d_tiny", dict(input_shape=(16, 32)), "input_shape"),
        ("resnet3d_tiny", dict(layers=(1, 1), widths=(8, 16, 32)), "layers"),
        ("resnet3d_tiny", dict(norm="layer"), "norm"),
        ("resnet3d_tiny", dict(stem_stride=3), "stem_stride"),
    ],
)
def test_bad_configs_raise_clear_errors(name, kw, match):
    with pytest.raises(ValueError, match=match):
        create_volume_encoder(name, **kw)


def test_bad_inputs_raise_clear_errors():
    enc = _tiny("vit3d_tiny")
    with pytest.raises(ValueError, match=r"\(16, 30, 32\).*patch size"):
        enc(torch.rand(1, 1, 16, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\)"):
        enc(torch.rand(1, 16, 32, 32))
    with pytest.raises(KeyError, match="vit3d_tiny"):
        create_volume_encoder("vit3d_huge")


def test_duplicate_registration_is_refused():
    def vit3d_tiny(**kw):  # same name as a built-in
        return ViT3D(**kw)

    with pytest.raises(ValueError, match="registered twice"):
        register_encoder(vit3d_tiny)


def test_checkpoint_round_trip_and_position_interpolation(tmp_path):
    src = _tiny("vit3d_tiny")
    path = tmp_path / "enc.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    same = create_volume_encoder("vit3d_tiny", input_shape=SHAPE, checkpoint=path).eval()
    x = torch.rand(1, 1, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(same(x), src.eval()(x))
    bigger = create_volume_encoder("vit3d_tiny", input_shape=(32, 64, 64), checkpoint=path)
    torch.testing.assert_close(bigger.patch_embed.weight, src.patch_embed.weight)
    assert bigger.pos_embed.shape[1] == 4 * 4 * 4
    with pytest.raises(ValueError, match="do not fit"):
        create_volume_encoder("vit3d_tiny", input_shape=SHAPE, embed_dim=96, checkpoint=path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        create_volume_encoder("vit3d_tiny", checkpoint=tmp_path / "missing.safetensors")


@pytest.mark.parametrize("name", ["resnet3d_tiny", "vit3d_tiny"])
def test_feature_map_stages_match_hooks_and_leave_forward_unchanged(name):
    """``feature_map(x, stage)`` has the grid ``stage_grid`` names, equals the output of ``feature_module(stage)``
    during a forward pass, and ``feature_map(x)`` / ``forward`` are unchanged (the last stage, pooled)."""
    torch.manual_seed(0)
    enc = create_volume_encoder(name, input_shape=(16, 32, 32)).eval()
    x = torch.rand(2, 1, 16, 32, 32)
    with torch.no_grad():
        last = enc.feature_map(x)
        assert torch.equal(enc.feature_map(x, None), last)
        torch.testing.assert_close(enc(x), last.mean(dim=(2, 3, 4)))
        stages = range(0, 5) if name.startswith("resnet") else range(0, 2)
        for stage in stages:
            fm = enc.feature_map(x, stage)
            assert tuple(fm.shape) == (2, enc.stage_channels(stage), *enc.stage_grid((16, 32, 32), stage))
            seen: list[torch.Tensor] = []
            handle = enc.feature_module(stage).register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
            enc(x)
            handle.remove()
            hooked = seen[0] if seen[0].ndim == 5 else seen[0].transpose(1, 2).reshape(fm.shape)
            torch.testing.assert_close(hooked, fm)
    if name.startswith("resnet"):
        assert [enc.stage_grid((32, 64, 64), s) for s in range(5)] == [
            (8, 16, 16), (8, 16, 16), (4, 8, 8), (2, 4, 4), (1, 2, 2)]
    with pytest.raises(ValueError, match="stage"):
        enc.feature_module(9)


OWN_ENCODER = '''
import torch
from torch import nn
from ctxray.models.registry import VolumeEncoder

class Own(VolumeEncoder):
    def __init__(self, input_shape, width=6):
        super().__init__()
        self.input_shape, self.out_dim, self.feature_dim = tuple(input_shape), width, width
        self.conv = nn.Conv3d(1, width, 4, stride=4)

    def feature_map(self, x):
        return self.conv(x)

    def forward(self, x):
        return self.feature_map(x).mean(dim=(2, 3, 4))

def build(input_shape, width=6):
    return Own(input_shape, width)

def not_an_encoder(**kwargs):
    return torch.zeros(3)
'''


def test_an_encoder_of_your_own_by_module_and_function(tmp_path, monkeypatch):
    from ctxray.models.dual import DualEncoder, DualEncoderConfig
    from ctxray.models.text import TextEncoderConfig

    (tmp_path / "own_encoders.py").write_text(OWN_ENCODER)
    monkeypatch.syspath_prepend(str(tmp_path))
    enc = create_volume_encoder("own_encoders:build", input_shape=SHAPE, width=5)
    assert enc(torch.rand(2, 1, *SHAPE)).shape == (2, 5)
    # the dual encoder builds it by the name its config (and so every checkpoint) stores
    cfg = DualEncoderConfig(encoder="own_encoders:build", input_shape=SHAPE, encoder_kwargs={"width": 5}, embed_dim=8,
                            text=TextEncoderConfig(hidden=16, layers=1, heads=2, max_length=12, vocab_size=50))
    model = DualEncoder(cfg)
    again = DualEncoder(cfg)
    again.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, *SHAPE)
    assert torch.equal(model.encode_volume(x), again.encode_volume(x)) and model.encode_volume(x).shape == (2, 8)
    with pytest.raises(KeyError, match="cannot import 'no_such_module'"):
        create_volume_encoder("no_such_module:build", input_shape=SHAPE)
    with pytest.raises(KeyError, match="has no function 'missing'"):
        create_volume_encoder("own_encoders:missing", input_shape=SHAPE)
    with pytest.raises(TypeError, match="must return an nn.Module with an int out_dim"):
        create_volume_encoder("own_encoders:not_an_encoder", input_shape=SHAPE)
    with pytest.raises(KeyError, match="module:function"):
        create_volume_encoder("vit3d_huge")
