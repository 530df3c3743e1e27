"""Registry of 3D volume encoders, timm-style: ``@register_encoder`` and ``create_volume_encoder(name)``.

Every encoder maps a CT volume ``(B, 1, D, H, W)`` float in ``[0, 1]`` to one embedding per volume and exposes
its last spatial feature map (for heatmaps and the report decoder). Families live in ``vit3d.py``,
``vit3d_axial.py`` (factorised attention) and ``resnet3d.py``; each registers a ``*_tiny`` variant for tests.

Example::

    from ctxray.models.registry import create_volume_encoder, list_encoders
    enc = create_volume_encoder("vit3d_small", input_shape=(48, 96, 96))
    emb = enc(volume)  # (B, enc.out_dim)
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "VolumeEncoder",
    "check_input_shape",
    "create_volume_encoder",
    "list_encoders",
    "register_encoder",
]

_REGISTRY: dict[str, Callable[..., VolumeEncoder]] = {}
_BUILTIN_FAMILIES = ("ctxray.models.vit3d", "ctxray.models.vit3d_axial", "ctxray.models.resnet3d",
                     "ctxray.models.i3resnet")


class VolumeEncoder(nn.Module):
    """Base class of the 3D volume encoders.

    Subclasses set ``out_dim`` (width of the pooled embedding), ``feature_dim`` (channels of
    ``feature_map``) and ``input_shape`` (the ``(D, H, W)`` the encoder was built for), and implement
    ``feature_map`` and ``forward``.
    """

    out_dim: int
    feature_dim: int
    input_shape: tuple[int, int, int]
    grad_checkpointing: bool = False

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Last spatial feature map.

        Shape:
            x: (B, 1, D, H, W) float in [0, 1] -> (B, feature_dim, d, h, w)
        """
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embedding. Shape: x (B, 1, D, H, W) float in [0, 1] -> (B, out_dim)."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Names of parameters (relative to this module) that should get no weight decay beyond the usual
        1-D ones (norms, biases), e.g. position embeddings."""
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass to save memory (training only)."""
        self.grad_checkpointing = bool(enable)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(
                f"{type(self).__name__} expects a volume batch shaped (B, 1, D, H, W); got {tuple(x.shape)}"
            )


def check_input_shape(input_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    """Validate an ``input_shape`` kwarg and return it as a tuple of three positive ints.

    Raises:
        ValueError: naming the encoder when the shape is not three positive integers.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"{name}: input_shape must be three positive sizes (D, H, W); got {tuple(input_shape)}")
    return shape  # type: ignore[return-value]


def register_encoder(fn: Callable[..., VolumeEncoder]) -> Callable[..., VolumeEncoder]:
    """Decorator: register a factory function under its own name.

    Raises:
        ValueError: if the name is already taken.
    """
    name = fn.__name__
    if name in _REGISTRY and _REGISTRY[name] is not fn:
        raise ValueError(f"volume encoder {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def _load_builtins() -> None:
    for module in _BUILTIN_FAMILIES:
        importlib.import_module(module)


def list_encoders(pattern: str = "*") -> list[str]:
    """Names of the registered encoders matching a shell-style ``pattern``, sorted."""
    _load_builtins()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def create_volume_encoder(name: str, checkpoint: str | Path | None = None, **kwargs: Any) -> VolumeEncoder:
    """Build a registered encoder.

    Args:
        name: a name from ``list_encoders()``, or ``"module:function"`` for an encoder of your own: ``module`` is
            imported (from ``PYTHONPATH``) and ``function(**kwargs)`` must return a :class:`VolumeEncoder` (an
            ``nn.Module`` with ``out_dim`` that maps ``(B, 1, D, H, W)`` to ``(B, out_dim)``). The name is what a
            run's config and checkpoints store, so evaluation finds the same encoder.
        checkpoint: optional local ``.safetensors`` file with the encoder's weights (keys as in
            ``encoder.state_dict()``; a ViT position embedding of another grid is interpolated).
        **kwargs: passed to the family (``input_shape``, ``grad_checkpointing``, sizes...).

    Returns:
        The encoder, in training mode.

    Raises:
        KeyError: for an unknown name (the message lists the known ones).
    """
    _load_builtins()
    if name in _REGISTRY:
        encoder = _REGISTRY[name](**kwargs)
    elif ":" in name:
        encoder = _external_encoder(name, kwargs)
    else:
        raise KeyError(f"unknown volume encoder {name!r}; known: {', '.join(list_encoders())}, or "
                       f"'module:function' for an encoder of your own")  # fmt: skip
    if checkpoint is not None:
        load_encoder_weights(encoder, checkpoint)
    return encoder


def _external_encoder(name: str, kwargs: dict[str, Any]) -> VolumeEncoder:
    """The encoder built by ``module:function`` (see :func:`create_volume_encoder`).

    Raises:
        KeyError: if the module or function cannot be found (naming which).
        TypeError: if the function does not return an ``nn.Module`` with an integer ``out_dim``.
    """
    module_name, _, function = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise KeyError(f"volume encoder {name!r}: cannot import {module_name!r} ({err}); is it on PYTHONPATH?") from err
    build = getattr(module, function, None)
    if not callable(build):
        raise KeyError(f"volume encoder {name!r}: {module_name} has no function {function!r}")
    encoder = build(**kwargs)
    if not isinstance(encoder, nn.Module) or not isinstance(getattr(encoder, "out_dim", None), int):
        raise TypeError(f"volume encoder {name!r}: {function}() must return an nn.Module with an int out_dim "
                        f"(a VolumeEncoder); got {type(encoder).__name__}")  # fmt: skip
    logger.info("volume encoder %s: %s from %s", name, type(encoder).__name__, getattr(module, "__file__", "?"))
    return encoder


def load_encoder_weights(encoder: VolumeEncoder, path: str | Path) -> None:
    """Load a ``.safetensors`` state dict into ``encoder`` (strict; shapes must match after adaptation).

    Raises:
        FileNotFoundError, ValueError: naming the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: encoder checkpoint not found")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    adapt = getattr(encoder, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(state)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {type(encoder).__name__}: {err}") from err
    logger.info("loaded volume encoder weights from %s", path)
