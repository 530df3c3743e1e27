"""The preprocessing spec: target grid, HU window and output dtype, versioned and stored with a cache.

``spec.apply`` maps a RAS ``(D, H, W)`` volume to the model's input grid in one trilinear resample
(:mod:`ctxray.data.resample`, streamed slice by slice): the output grid has ``shape_zyx`` voxels of
``spacing_zyx`` mm centred on the input volume's centre, so resampling, cropping and padding are one
pass (voxels outside the input get ``hu_min``). HU are then clipped to ``[hu_min, hu_max]`` and
scaled to ``[0, 1]``. With ``fit="resize"`` the whole input field of view is resampled onto
``shape_zyx`` instead (spacing ignored). ``spec.invert`` puts a map on that grid (an overlay, a heatmap
of any coarser shape covering the same field of view) back on the original voxel grid.

Presets (``get_preset``):

======== ================= ================= ============== =========================================
name     spacing z,y,x mm  shape D,H,W       HU window      convention
======== ================= ================= ============== =========================================
tiny     21.0, 11.0, 11.0  16, 32, 32        [-1000, 1000]  tests; field of view 336 x 352 x 352 mm
small    10.0, 5.4, 5.4    32, 64, 64        [-1000, 1000]  the tiny world at its own grid (320 x 346 mm)
demo     7.0, 3.6, 3.6     48, 96, 96        [-1000, 1000]  CPU demo; field of view 336 x 346 x 346 mm
ctclip   1.5, 0.75, 0.75   240, 480, 480     [-1000, 1000]  CT-CLIP (CT-RATE paper)
fvlm     3.0, 1.0, 1.0     112, 336, 336     [-1150, 350]   fVLM / HLIP-like (shape ours: 336 mm cube)
merlin   3.0, 1.5, 1.5     160, 224, 224     [-1000, 1000]  Merlin-like (window ours)
astra    (resize)          160, 224, 224     [-1000, 200]   Astra's chest input (``model.pretrained=astra``)
======== ================= ================= ============== =========================================

``astra`` follows the chest preprocessing of the Astra weights' reference extractor: the whole field of view
resized onto 160 x 224 x 224 (D, H, W), HU window [-1000, 200]. Two differences remain: Astra first crops the
volume to the bounding box of voxels above -1000 HU, and resizes by area averaging where we resample
trilinearly (``bench/astra_equivalence.py`` measures what that changes in the features).

``tiny``, ``small`` and ``demo`` are chosen so a 300-350 mm adult chest (the synthetic world's ~32x64x64 and
~64x128x128 volumes at ~5x2.7x2.7 mm) fits whole: only a few mm of air are cropped or padded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ctxray.config import from_dict
from ctxray.data.resample import resample_grid, resample_slices
from ctxray.utils.io import atomic_write_text

__all__ = ["PRESETS", "PreprocessSpec", "get_preset", "list_presets", "resample_grid", "unit_float16"]

SPEC_VERSION = 1
Fit = Literal["crop_pad", "resize"]
OutDtype = Literal["float16", "float32", "uint8"]


@dataclass(frozen=True)
class PreprocessSpec:
    """How a HU volume becomes model input.

    Args:
        name: preset name (or the user's).
        spacing_zyx: target voxel size in mm (ignored when ``fit="resize"``).
        shape_zyx: output shape (D, H, W).
        hu_min, hu_max: HU window; values are clipped to it and scaled to [0, 1].
        dtype: dtype of the cached arrays (``uint8`` stores round(255 * x)); ``apply`` returns float32.
        fit: ``crop_pad`` (resample to spacing, centre crop/pad to shape) or ``resize`` (whole field of
            view onto shape).
        version: spec format version; a cache with another version is refused.
        orientation: array orientation, always ``RAS`` (stated so a stored spec says it).
    """

    name: str
    spacing_zyx: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]
    hu_min: float = -1000.0
    hu_max: float = 1000.0
    dtype: OutDtype = "float16"
    fit: Fit = "crop_pad"
    version: int = SPEC_VERSION
    orientation: str = "RAS"

    def __post_init__(self) -> None:
        if len(self.spacing_zyx) != 3 or any(s <= 0 for s in self.spacing_zyx):
            raise ValueError(f"spec {self.name!r}: spacing_zyx must be 3 positive numbers, got {self.spacing_zyx}")
        if len(self.shape_zyx) != 3 or any(int(n) < 1 for n in self.shape_zyx):
            raise ValueError(f"spec {self.name!r}: shape_zyx must be 3 positive integers, got {self.shape_zyx}")
        if not self.hu_max > self.hu_min:
            raise ValueError(f"spec {self.name!r}: hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")
        if self.dtype not in ("float16", "float32", "uint8"):
            raise ValueError(f"spec {self.name!r}: dtype must be float16, float32 or uint8, got {self.dtype!r}")
        if self.orientation != "RAS":
            raise ValueError(f"spec {self.name!r}: only RAS orientation ((D, H, W) = I->S, P->A, L->R) is supported")
        if self.fit not in ("crop_pad", "resize"):
            raise ValueError(f"spec {self.name!r}: fit must be crop_pad or resize, got {self.fit!r}")
        object.__setattr__(self, "spacing_zyx", tuple(float(s) for s in self.spacing_zyx))
        object.__setattr__(self, "shape_zyx", tuple(int(n) for n in self.shape_zyx))

    # ---- grids ---------------------------------------------------------------------------------
    def output_grid(
        self, in_shape: tuple[int, ...], in_spacing_zyx: tuple[float, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Origin and spacing (z, y, x) mm of the output grid in the input's frame (input voxel 0 at 0).

        Returns:
            (origin of output voxel 0, output spacing), each (3,) float64.
        """
        n_in = np.asarray(in_shape[:3], dtype=np.float64)
        s_in = np.asarray(in_spacing_zyx, dtype=np.float64)
        n_out = np.asarray(self.shape_zyx, dtype=np.float64)
        if self.fit == "resize":
            s_out = n_in * s_in / n_out
        else:
            s_out = np.asarray(self.spacing_zyx, dtype=np.float64)
        centre = (n_in - 1) / 2 * s_in
        origin = centre - (n_out - 1) / 2 * s_out
        same = np.isclose(s_out, s_in)
        # Same spacing on an axis: snap to whole input voxels so a pure crop/pad does not blur.
        origin[same] = np.floor(origin[same] / s_in[same] + 1e-6) * s_in[same]
        return origin, s_out

    def window(self, hu: np.ndarray) -> np.ndarray:
        """Clip to the HU window and scale to [0, 1] in place (float arrays). Returns the array."""
        np.clip(hu, self.hu_min, self.hu_max, out=hu)
        hu -= np.float32(self.hu_min)
        hu *= np.float32(1.0 / (self.hu_max - self.hu_min))
        return hu

    def apply(
        self, hu: np.ndarray, spacing_zyx: tuple[float, float, float], *, slope: float = 1.0, intercept: float = 0.0
    ) -> np.ndarray:
        """Resample, crop/pad, window and scale one volume.

        Args:
            hu: RAS volume; any real dtype. With ``slope``/``intercept`` it may hold stored values
                (``HU = hu * slope + intercept``), which saves a full-resolution float copy.
            spacing_zyx: its voxel size in mm.

        Returns:
            Model input grid. Shape: ``shape_zyx`` float32 in [0, 1].
        """
        return self._transform(hu, spacing_zyx, slope, intercept, encode=False)

    def apply_encoded(
        self, hu: np.ndarray, spacing_zyx: tuple[float, float, float], *, slope: float = 1.0, intercept: float = 0.0
    ) -> np.ndarray:
        """``encode(apply(...))`` without the full-size float32 intermediate (what the cache stores).

        Returns:
            Shape: ``shape_zyx`` in ``dtype``.
        """
        return self.apply_encoded_range(hu, spacing_zyx, slope=slope, intercept=intercept)[0]

    def apply_encoded_range(
        self, hu: np.ndarray, spacing_zyx: tuple[float, float, float], *, slope: float = 1.0, intercept: float = 0.0
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """:meth:`apply_encoded` plus its smallest and largest voxel, decoded to floats in [0, 1].

        The range is taken on each float32 slice before encoding (every encoding is monotone, so it equals
        ``decode`` of the encoded array's min and max) and costs no pass over the encoded volume; NaN when a
        voxel is NaN.

        Returns:
            (Shape: ``shape_zyx`` in ``dtype``, (low, high)).
        """
        stream = self.apply_encoded_slices(hu, spacing_zyx, slope=slope, intercept=intercept)
        out = np.empty(self.shape_zyx, dtype=self.dtype)
        for k, sl in enumerate(stream.slices):
            out[k] = sl
        return out, stream.value_range()

    def apply_encoded_slices(
        self, hu: np.ndarray, spacing_zyx: tuple[float, float, float], *, slope: float = 1.0, intercept: float = 0.0
    ) -> EncodedSlices:
        """:meth:`apply_encoded_range` one output slice at a time (a writer streams them: no output-sized array).

        Returns:
            :class:`EncodedSlices`: ``slices`` (each Shape: ``shape_zyx[1:]`` in ``dtype``; read, never modify),
            then ``value_range()`` once they are all taken.
        """
        stream = EncodedSlices(iter(()), self)
        stream.slices = self._transform(hu, spacing_zyx, slope, intercept, encode=True, lows=stream.lows,
                                        highs=stream.highs, one_by_one=True)
        return stream

    def _transform(self, hu: np.ndarray, spacing_zyx, slope: float, intercept: float, encode: bool,
                   lows: list | None = None, highs: list | None = None, one_by_one: bool = False):
        if hu.ndim != 3:
            raise ValueError(f"spec.apply expects a (D, H, W) volume, got shape {tuple(hu.shape)}")
        if slope == 0:
            raise ValueError("spec.apply: rescale slope must not be 0")
        origin, s_out = self.output_grid(hu.shape, spacing_zyx)
        span = self.hu_max - self.hu_min
        scale, offset = np.float32(slope / span), np.float32((intercept - self.hu_min) / span)

        def to_unit(x: np.ndarray) -> np.ndarray:  # (v * slope + intercept - hu_min) / range, clipped
            x *= scale
            x += offset
            np.clip(x, 0.0, 1.0, out=x)
            if not encode:
                return x
            lo, hi = x.min(), x.max()  # NaN if any voxel is NaN
            if lows is not None and highs is not None:
                lows.append(lo)
                highs.append(hi)
            return self._encode_unit(x, bool(lo >= 0.0 and hi <= 1.0))

        fill = (self.hu_min - intercept) / slope
        if one_by_one:
            return resample_slices(hu, spacing_zyx, (0.0, 0.0, 0.0), self.shape_zyx, s_out, origin, fill, to_unit)
        dtype = np.dtype(self.dtype) if encode else np.float32
        return resample_grid(hu, spacing_zyx, (0.0, 0.0, 0.0), self.shape_zyx, s_out, origin, fill, to_unit, dtype)

    def invert(
        self, map_: np.ndarray, original_shape: tuple[int, int, int], original_spacing_zyx: tuple[float, float, float]
    ) -> np.ndarray:
        """Put a map on the output grid back onto the original voxel grid (trilinear; 0 outside).

        Args:
            map_: values on the output field of view; any shape (a coarse heatmap covers the same
                field of view as ``shape_zyx``). Shape: (d, h, w).
            original_shape: (D, H, W) of the volume given to :meth:`apply`.
            original_spacing_zyx: its spacing.

        Returns:
            Shape: ``original_shape`` float32.
        """
        if map_.ndim != 3:
            raise ValueError(f"spec.invert expects a (d, h, w) map, got shape {tuple(map_.shape)}")
        origin, s_out = self.output_grid(original_shape, original_spacing_zyx)
        n_out = np.asarray(self.shape_zyx, dtype=np.float64)
        extent = n_out * s_out
        s_map = extent / np.asarray(map_.shape, dtype=np.float64)
        first = origin - s_out / 2 + s_map / 2
        return resample_grid(
            np.asarray(map_, dtype=np.float32), s_map, first, original_shape, original_spacing_zyx, (0.0,) * 3, 0.0
        )

    def to_output_index(
        self,
        zyx_vox: np.ndarray,
        original_shape: tuple[int, int, int],
        original_spacing_zyx: tuple[float, float, float],
    ) -> np.ndarray:
        """Map voxel coordinates on the original grid to (fractional) voxel coordinates on the output grid.

        Shape: (..., 3) -> (..., 3).
        """
        origin, s_out = self.output_grid(original_shape, original_spacing_zyx)
        mm = np.asarray(zyx_vox, dtype=np.float64) * np.asarray(original_spacing_zyx, dtype=np.float64)
        return (mm - origin) / s_out

    # ---- storage -------------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Convert a [0, 1] float32 array to the cache dtype."""
        if self.dtype == "uint8":
            return np.rint(x * 255.0).astype(np.uint8)
        return x.astype(self.dtype, copy=False)

    def _encode_unit(self, x: np.ndarray, in_unit: bool) -> np.ndarray:
        """:meth:`encode` of a float32 array, through :func:`unit_float16` when the cache dtype is float16 and
        ``in_unit`` says every value lies in [0, 1]: the same bits either way."""
        if in_unit and self.dtype == "float16" and x.dtype == np.float32 and x.flags.c_contiguous:
            return unit_float16(x)
        return self.encode(x)

    @staticmethod
    def decode(x: np.ndarray) -> np.ndarray:
        """A cached array back to float32 in [0, 1]."""
        if x.dtype == np.uint8:
            return x.astype(np.float32) * np.float32(1.0 / 255.0)
        return np.asarray(x, dtype=np.float32)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["spacing_zyx"], d["shape_zyx"] = list(self.spacing_zyx), list(self.shape_zyx)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        return from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PreprocessSpec:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: cannot read preprocessing spec: {err}") from err
        if data.get("version") != SPEC_VERSION:
            raise ValueError(f"{path}: spec version {data.get('version')} is not the supported {SPEC_VERSION}")
        return cls.from_dict(data)


PRESETS: dict[str, PreprocessSpec] = {
    "tiny": PreprocessSpec("tiny", (21.0, 11.0, 11.0), (16, 32, 32)),
    "small": PreprocessSpec("small", (10.0, 5.4, 5.4), (32, 64, 64)),
    "demo": PreprocessSpec("demo", (7.0, 3.6, 3.6), (48, 96, 96)),
    "ctclip": PreprocessSpec("ctclip", (1.5, 0.75, 0.75), (240, 480, 480)),
    "fvlm": PreprocessSpec("fvlm", (3.0, 1.0, 1.0), (112, 336, 336), hu_min=-1150.0, hu_max=350.0),
    "merlin": PreprocessSpec("merlin", (3.0, 1.5, 1.5), (160, 224, 224)),
    # spacing is nominal: fit="resize" maps the whole field of view onto the shape
    "astra": PreprocessSpec("astra", (2.0, 1.5, 1.5), (160, 224, 224), hu_min=-1000.0, hu_max=200.0, fit="resize"),
}


@dataclass
class EncodedSlices:
    """Output slices of :meth:`PreprocessSpec.apply_encoded_slices`, in order, and the value range they had."""

    slices: Iterator[np.ndarray]
    spec: PreprocessSpec
    lows: list = dataclasses.field(default_factory=list)
    highs: list = dataclasses.field(default_factory=list)

    def value_range(self) -> tuple[float, float]:
        """Smallest and largest stored voxel decoded to [0, 1] floats (NaN when a voxel is NaN); call it after
        every slice was taken."""
        if not self.lows:
            raise RuntimeError("value_range() before the slices were taken")
        ends = np.array([np.min(self.lows), np.max(self.highs)], dtype=np.float32)  # np.min/max: NaN propagates
        lo, hi = (float(v) for v in self.spec.decode(self.spec.encode(ends)))
        return lo, hi


def unit_float16(x: np.ndarray) -> np.ndarray:
    """``x.astype(np.float16)`` for a C-contiguous float32 array whose values all lie in [0, 1], ~3x faster.

    NumPy's float32 -> float16 cast is scalar code (~12 ns a value on our CPU), a third of the ``ctclip``
    output step. This rounds to nearest, ties to even, on the bits in a few vectorised integer passes: a normal
    half (x >= 2**-14) re-biases the exponent from 127 to 15 and keeps the top 10 mantissa bits after adding
    0xFFF plus the lowest kept bit (ties go to even); a subnormal half (or zero) is the bits of ``x + 0.5`` in
    float32, whose ulp (2**-24) is the subnormal half's, minus those of 0.5. Equal to NumPy's cast on every
    one of the 1,065,353,217 float32 values in [0, 1] (checked once exhaustively; the tests check a sample,
    every exponent boundary and every tie).

    Shape: any -> same, float16.
    """
    u = x.view(np.uint32)
    h = u >> np.uint32(13)
    h &= np.uint32(1)  # lowest kept mantissa bit: a tie rounds to even
    h += u
    h += np.uint32(0xC8000FFF)  # (15 - 127) << 23 (mod 2**32) + 0xFFF (just under half an ulp)
    h >>= np.uint32(13)
    sub = (x + np.float32(0.5)).view(np.uint32)
    sub -= np.uint32(0x3F000000)
    np.copyto(h, sub, where=u < np.uint32(113 << 23))  # below 2**-14: a subnormal half (0 stays 0)
    return h.astype(np.uint16).view(np.float16)


def get_preset(name: str) -> PreprocessSpec:
    """A named preset (see the module docstring)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preprocessing preset {name!r}; known: {sorted(PRESETS)}") from None


def list_presets() -> list[str]:
    return list(PRESETS)
