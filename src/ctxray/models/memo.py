"""Memoised frozen prefix of an :class:`~ctxray.models.i3resnet.I3ResNet`: compute frozen stages once per volume.

With ``freeze_stages=f`` the stem and the first ``f - 1`` stages get no gradients and keep their BatchNorm
statistics, so their output depends on the input alone. When the inputs repeat (no augmentation: every epoch
sees the same cached volumes), that output can be computed once per volume and reused: training then costs
only the trainable stages, the projection and the report tower. This is what makes BIUD on top of a frozen
I3ResNet-152 affordable on a CPU (``bench/astra_biud.py``).

:func:`attach_prefix_memo` replaces the encoder's ``feature_map`` on the instance (its state dict, checkpoints
and class are untouched); the memo's store is a plain dict from a hash of each sample's float32 bytes to its
prefix output, keyed also by a fingerprint of the frozen weights so one store can serve several models (a
training run and the checkpoint it writes) without mixing weight sets. Inputs that are not in the store (e.g.
augmented ones) are computed, so outputs are always those of the plain encoder, up to float rounding of batched
convolutions; the store then grows without bound, so attach it only where inputs repeat.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ctxray.models.i3resnet import I3ResNet

__all__ = ["PrefixMemo", "attach_prefix_memo", "detach_prefix_memo", "weights_fingerprint"]


@dataclass
class PrefixMemo:
    """Frozen-prefix outputs by (weights fingerprint, sample hash).

    Attributes:
        store: ``(fingerprint, sample hash) -> (C, d, h, w)`` float32 prefix output.
        hits, misses: samples served from the store / computed.
        seconds: time spent computing misses (the feature extraction the store saved afterwards).
    """

    store: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    seconds: float = 0.0

    def save(self, path: str | Path) -> None:
        """Write the store as safetensors (keys ``fingerprint/sample``)."""
        from safetensors.torch import save_file

        save_file({f"{fp}/{sample}": t.contiguous() for (fp, sample), t in self.store.items()}, str(path))

    @classmethod
    def load(cls, path: str | Path) -> PrefixMemo:
        """A store written by :meth:`save` (no pickle)."""
        from safetensors.torch import load_file

        return cls(store={tuple(k.split("/", 1)): t for k, t in load_file(str(path)).items()})  # type: ignore[misc]


def weights_fingerprint(encoder: I3ResNet, parts: int | None = None) -> str:
    """A hash of the parameters and buffers of the encoder's first ``parts`` parts (default: the frozen ones).

    Parts are the stem and stages 1-4 (``I3ResNet._parts``); the hash names which weights, and how many of them,
    a prefix output belongs to.
    """
    return _fingerprints(encoder, encoder.freeze_stages if parts is None else parts)[-1]


def _fingerprints(encoder: I3ResNet, parts: int) -> list[str]:
    """Fingerprints of the prefixes of 1 .. ``parts`` parts (cumulative hashes)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((encoder.layers, encoder.width)).encode())
    out = []
    for j, part in enumerate(encoder._parts()[:parts], start=1):
        h.update(f"part {j}".encode())
        for name, t in part.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        out.append(h.copy().hexdigest())
    return out


def _sample_key(x: torch.Tensor) -> str:
    return hashlib.blake2b(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes(),
                           digest_size=16).hexdigest()


def attach_prefix_memo(encoder: I3ResNet, memo: PrefixMemo) -> I3ResNet:
    """Serve ``encoder``'s frozen prefix (stem and stages ``1 .. freeze_stages - 1``) from ``memo``.

    Args:
        encoder: an I3ResNet with ``freeze_stages >= 1``.
        memo: the store (shared between encoders of the same frozen weights is fine: the key holds a fingerprint).

    Returns:
        The same encoder, its ``feature_map`` replaced on the instance (``detach_prefix_memo`` restores it).

    Raises:
        ValueError: an encoder that is not an I3ResNet or has nothing frozen.
    """
    if not isinstance(encoder, I3ResNet) or encoder.freeze_stages < 1:
        raise ValueError(f"attach_prefix_memo needs an I3ResNet with freeze_stages >= 1; got "
                         f"{type(encoder).__name__} freeze_stages={getattr(encoder, 'freeze_stages', None)}")
    f = encoder.freeze_stages
    fingerprints = _fingerprints(encoder, f)  # [j - 1]: prefix of j parts
    plain = type(encoder).feature_map.__get__(encoder)
    parts = encoder._parts()

    def feature_map(x: torch.Tensor, stage: int | None = None) -> torch.Tensor:
        """As ``I3ResNet.feature_map``; parts ``[:freeze_stages]`` come from the memo."""
        k = encoder._stage_index(stage)
        if k + 1 < f:  # a stage inside the frozen prefix: nothing to reuse
            return plain(x, stage)
        encoder._check_input(x)
        samples = [_sample_key(xi) for xi in x]
        keys = [(fingerprints[-1], s) for s in samples]
        todo = [i for i, key in enumerate(keys) if key not in memo.store]
        if todo:
            t0 = time.perf_counter()
            starts: dict[int, list[int]] = {}  # a shorter prefix already stored is continued, not recomputed
            for i in todo:
                j = next((j for j in range(f - 1, 0, -1) if (fingerprints[j - 1], samples[i]) in memo.store), 0)
                starts.setdefault(j, []).append(i)
            with torch.no_grad():
                for j, idx in starts.items():
                    y = x[idx] if j == 0 else torch.stack([memo.store[(fingerprints[j - 1], samples[i])]
                                                           for i in idx]).to(x.device, x.dtype)
                    for part in parts[j:f]:
                        y = part(y)  # frozen parts are in eval mode (I3ResNet.train keeps them there)
                    for i, yi in zip(idx, y):
                        memo.store[keys[i]] = yi.float().cpu()
            memo.seconds += time.perf_counter() - t0
        memo.misses += len(todo)
        memo.hits += len(keys) - len(todo)
        # (B, C, d, h, w): the frozen prefix's output, then the trainable parts
        y = torch.stack([memo.store[key] for key in keys]).to(x.device, x.dtype)
        for stage_module in encoder.stages[f - 1: k]:
            stage_module.checkpointing = encoder.grad_checkpointing
            y = stage_module(y)
        return y

    encoder.feature_map = feature_map  # type: ignore[method-assign]
    return encoder


def detach_prefix_memo(encoder: I3ResNet) -> I3ResNet:
    """Undo :func:`attach_prefix_memo` (the class's ``feature_map`` again)."""
    encoder.__dict__.pop("feature_map", None)
    return encoder
