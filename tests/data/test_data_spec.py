"""PreprocessSpec: presets, resample + crop/pad geometry, window, invert, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from ctxray.data.spec import PreprocessSpec, get_preset, list_presets, unit_float16


def test_presets_match_the_documented_conventions():
    assert set(list_presets()) >= {"tiny", "demo", "ctclip", "fvlm", "merlin"}
    ctclip = get_preset("ctclip")
    assert ctclip.spacing_zyx == (1.5, 0.75, 0.75) and ctclip.shape_zyx == (240, 480, 480)
    assert (ctclip.hu_min, ctclip.hu_max) == (-1000, 1000)
    fvlm = get_preset("fvlm")
    assert fvlm.spacing_zyx == (3.0, 1.0, 1.0) and (fvlm.hu_min, fvlm.hu_max) == (-1150, 350)
    merlin = get_preset("merlin")
    assert merlin.spacing_zyx == (3.0, 1.5, 1.5) and merlin.shape_zyx == (160, 224, 224)
    assert get_preset("tiny").shape_zyx == (16, 32, 32) and get_preset("demo").shape_zyx == (48, 96, 96)
    for name in ("tiny", "demo"):  # a 300-350 mm chest fits in every direction
        fov = np.multiply(get_preset(name).spacing_zyx, get_preset(name).shape_zyx)
        assert np.all(fov >= 320) and np.all(fov <= 360)
    with pytest.raises(ValueError, match="unknown preprocessing preset 'nope'"):
        get_preset("nope")


def test_identity_grid_is_exact_window():
    spec = PreprocessSpec("t", (2.0, 1.0, 1.0), (6, 8, 10), hu_min=-1000, hu_max=1000)
    hu = np.random.default_rng(0).uniform(-1500, 1500, (6, 8, 10)).astype(np.float32)
    out = spec.apply(hu, (2.0, 1.0, 1.0))
    np.testing.assert_allclose(out, (np.clip(hu, -1000, 1000) + 1000) / 2000, atol=1e-6)


def test_slope_intercept_equal_applying_them_first():
    spec = get_preset("tiny")
    raw = np.random.default_rng(1).integers(0, 2000, (20, 30, 30)).astype(np.int16)
    a = spec.apply(raw, (5.0, 3.0, 3.0), slope=1.0, intercept=-1024.0)
    b = spec.apply(raw.astype(np.float32) - 1024.0, (5.0, 3.0, 3.0))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_centre_is_kept_and_pad_is_air():
    """A bright cube at the input's centre lands at the output's centre; padding reads as hu_min (0)."""
    spec = PreprocessSpec("t", (2.0, 2.0, 2.0), (20, 20, 20))
    hu = np.full((9, 11, 13), -1000.0, dtype=np.float32)
    hu[3:6, 4:7, 5:8] = 1000.0  # centre voxel (4, 5, 6) at 1 mm spacing
    out = spec.apply(hu, (1.0, 1.0, 1.0))
    peak = np.unravel_index(np.argmax(out), out.shape)
    assert np.allclose(peak, (9.5, 9.5, 9.5), atol=1.0)
    assert out[0, 0, 0] == 0.0 and out[-1, -1, -1] == 0.0
    centre = spec.to_output_index(np.array([4.0, 5.0, 6.0]), hu.shape, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(centre, (9.5, 9.5, 9.5), atol=1e-6)


def test_to_output_index_tracks_an_off_centre_point():
    spec = get_preset("tiny")
    shape, spacing = (32, 64, 64), (10.0, 5.5, 5.5)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[20:24, 10:16, 40:46] = 1000.0
    out = spec.apply(hu, spacing)
    idx = np.rint(spec.to_output_index(np.array([21.5, 12.5, 42.5]), shape, spacing)).astype(int)
    assert out[tuple(idx)] > 0.5
    assert np.unravel_index(np.argmax(out), out.shape) == pytest.approx(tuple(idx), abs=1)


def test_invert_returns_to_the_original_grid():
    spec = PreprocessSpec("t", (2.0, 2.0, 2.0), (16, 16, 16))
    z, y, x = np.meshgrid(np.arange(20), np.arange(24), np.arange(24), indexing="ij")
    hu = (np.sin(z / 5) + np.cos(y / 6) + np.sin(x / 7)) * 300.0  # smooth: resampling loses little
    out = spec.apply(hu.astype(np.float32), (1.5, 1.2, 1.2))
    back = spec.invert(out, hu.shape, (1.5, 1.2, 1.2))
    assert back.shape == hu.shape
    expected = (np.clip(hu, -1000, 1000) + 1000) / 2000
    inner = (slice(3, -3), slice(3, -3), slice(3, -3))
    assert np.abs(back[inner] - expected[inner]).max() < 0.02
    # A heatmap-sized map covering the same field of view: block means of a linear ramp come back exactly.
    # (The input is larger than the 32 mm output field of view, so no block holds padding.)
    z, y, x = np.meshgrid(np.arange(24), np.arange(30), np.arange(30), indexing="ij")
    ramp = (z * 20.0 - y * 15.0 + x * 10.0).astype(np.float32)
    out = spec.apply(ramp, (1.5, 1.2, 1.2))
    pooled = out.reshape(4, 4, 4, 4, 4, 4).mean(axis=(1, 3, 5))
    coarse = spec.invert(pooled, ramp.shape, (1.5, 1.2, 1.2))
    inner = (slice(5, -5), slice(6, -6), slice(6, -6))
    expected = (ramp + 1000) / 2000
    assert coarse.shape == ramp.shape and np.abs(coarse[inner] - expected[inner]).max() < 1e-3


def test_resize_fits_whole_field_of_view():
    spec = PreprocessSpec("r", (1.0, 1.0, 1.0), (8, 8, 8), fit="resize")
    hu = np.full((30, 40, 50), 1000.0, dtype=np.float32)
    out = spec.apply(hu, (1.0, 1.0, 1.0))
    assert out.shape == (8, 8, 8) and np.all(out > 0.99)  # nothing padded


def test_json_round_trip_and_validation(tmp_path):
    spec = get_preset("fvlm")
    spec.save(tmp_path / "spec.json")
    assert PreprocessSpec.load(tmp_path / "spec.json") == spec
    with pytest.raises(ValueError, match="hu_max"):
        PreprocessSpec("bad", (1, 1, 1), (2, 2, 2), hu_min=10, hu_max=0)
    x = np.linspace(0, 1, 11, dtype=np.float32)
    u8 = PreprocessSpec("u", (1, 1, 1), (2, 2, 2), dtype="uint8")
    assert np.abs(u8.decode(u8.encode(x)) - x).max() <= 0.5 / 255 + 1e-7


def _sitk_resample(values, s_in, o_in, shape, s_out, o_out, fill):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32))
    img.SetSpacing([float(v) for v in s_in[::-1]])
    img.SetOrigin([float(v) for v in o_in[::-1]])
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in shape[::-1]])
    f.SetOutputSpacing([float(v) for v in s_out[::-1]])
    f.SetOutputOrigin([float(v) for v in o_out[::-1]])
    f.SetInterpolator(sitk.sitkLinear)
    f.SetDefaultPixelValue(float(fill))
    return sitk.GetArrayFromImage(f.Execute(img))


@pytest.mark.parametrize("seed", range(4))
def test_separable_resample_matches_simpleitk(seed):
    """The numpy resampler against ITK's linear ResampleImageFilter on random grids, edges included."""
    from ctxray.data.spec import resample_grid

    rng = np.random.default_rng(seed)
    values = rng.integers(-1000, 1000, tuple(rng.integers(5, 20, 3))).astype(np.int16)
    if seed % 2:
        values = values[::-1, :, ::-1]  # flipped views are read as they are
    s_in = rng.uniform(0.5, 3.0, 3)
    o_in = rng.uniform(-5, 5, 3)
    shape = tuple(int(n) for n in rng.integers(4, 25, 3))
    s_out = rng.uniform(0.4, 4.0, 3)
    o_out = o_in + rng.uniform(-6, 6, 3)
    ours = resample_grid(values, s_in, o_in, shape, s_out, o_out, -1234.0)
    ref = _sitk_resample(values, s_in, o_in, shape, s_out, o_out, -1234.0)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    inside = ref != -1234.0
    assert 0 < inside.sum() < inside.size  # the grids overlap and stick out
    boundary = np.isclose(np.abs(((o_out[:, None] + np.arange(max(shape)) * s_out[:, None] - o_in[:, None])
                                  / s_in[:, None]) % 1 - 0.5), 0, atol=1e-4).any()
    if not boundary:
        np.testing.assert_array_equal(ours == -1234.0, ~inside)
    np.testing.assert_allclose(ours[inside], ref[inside], atol=0.05)


def test_same_spacing_crop_and_pad_is_an_exact_copy():
    """Equal spacing and a whole-voxel offset take the no-interpolation path; it must agree with ITK too."""
    from ctxray.data.spec import resample_grid

    values = np.random.default_rng(5).integers(-1000, 1000, (7, 9, 11)).astype(np.int16)
    s = np.array([2.0, 1.0, 1.5])
    o_out = np.array([-2, 3, 0]) * s  # pad 2 slices in z, crop 3 rows in y
    ours = resample_grid(values, s, np.zeros(3), (12, 5, 11), s, o_out, -5000.0)
    ref = _sitk_resample(values, s, np.zeros(3), (12, 5, 11), s, o_out, -5000.0)
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(ours[2:9], values[:, 3:8])
    assert (ours[:2] == -5000).all() and (ours[9:] == -5000).all()


@pytest.mark.parametrize("dtype", ["float16", "uint8", "float32"])
def test_apply_encoded_equals_encode_of_apply(dtype):
    spec = PreprocessSpec("e", (4.0, 2.0, 2.0), (9, 14, 12), dtype=dtype)
    raw = np.random.default_rng(2).integers(0, 2500, (20, 24, 22)).astype(np.int16)[::-1]
    a = spec.apply_encoded(raw, (2.5, 1.5, 1.7), slope=1.0, intercept=-1024.0)
    b = spec.encode(spec.apply(raw, (2.5, 1.5, 1.7), slope=1.0, intercept=-1024.0))
    assert a.dtype == np.dtype(dtype) and a.shape == (9, 14, 12)
    np.testing.assert_array_equal(a, b)


def _float32_bits(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def test_unit_float16_equals_numpys_cast_on_every_boundary_and_tie():
    # every float32 exponent in [0, 1] (subnormal halves included) x mantissas around the 13 dropped bits:
    # just below / at / above each rounding tie, with even and odd kept bits; then a random sample
    exps = np.arange(0, 128, dtype=np.uint32) << 23
    low = np.array([0, 1, 2, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x2FFF, 0x3000, 0x3001, 0x7FFFFF,
                    0x7FE000, 0x7FEFFF, 0x7FF000, 0x7FF001, 0x400000, 0x401000, 0x403000], dtype=np.uint32)
    bits = (exps[:, None] | low[None, :]).ravel()
    sub = np.arange(0, 113 << 23, (113 << 23) // 200_000, dtype=np.uint32)  # across the subnormal-half range
    rand = np.random.default_rng(0).integers(0, 0x3F800001, 1_000_000, dtype=np.uint32)
    x = _float32_bits(np.concatenate([bits[bits <= 0x3F800000], sub, rand, [0x3F800000]]))
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(unit_float16(x).view(np.uint16), x.astype(np.float16).view(np.uint16))
    grid = np.linspace(0, 1, 4097, dtype=np.float32).reshape(17, 241)
    out = unit_float16(grid)
    assert out.dtype == np.float16 and out.shape == (17, 241)
    np.testing.assert_array_equal(out, grid.astype(np.float16))


@pytest.mark.parametrize("dtype", ["float16", "uint8", "float32"])
def test_apply_encoded_range_is_the_decoded_min_and_max(dtype):
    spec = PreprocessSpec("r", (3.0, 2.0, 2.0), (7, 12, 10), hu_min=-700, hu_max=300, dtype=dtype)
    hu = np.random.default_rng(4).normal(-300, 400, (9, 14, 11)).astype(np.float32)
    out, (lo, hi) = spec.apply_encoded_range(hu, (2.2, 1.6, 1.9))
    np.testing.assert_array_equal(out, spec.encode(spec.apply(hu, (2.2, 1.6, 1.9))))
    assert (lo, hi) == tuple(float(v) for v in spec.decode(np.array([out.min(), out.max()])))
    assert 0.0 <= lo < hi <= 1.0
    if dtype == "uint8":  # NaN to uint8 is undefined
        return
    hu[4, 7, 5] = np.nan  # float caches keep the NaN, and the range says so (process_item refuses the volume)
    out, (lo, hi) = spec.apply_encoded_range(hu, (2.2, 1.6, 1.9))
    assert np.isnan(out.astype(np.float32)).any()
    assert np.isnan(lo) and np.isnan(hi)
