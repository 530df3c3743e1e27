"""PyTorch Dataset over a volume cache (``ctxray preprocess`` output), memory-mapped, seeded augmentation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ctxray.data.cachedir import CacheIndex, read_manifest, read_spec, volume_path
from ctxray.data.spec import PreprocessSpec
from ctxray.labels import CT_RATE_LABELS


@dataclass(frozen=True)
class Augment:
    """Random augmentation, drawn per sample from ``(seed, epoch, index)`` so runs repeat.

    Args:
        crop_zyx: random crop to this shape (None: keep the cached shape).
        flip_prob_zyx: probability of flipping each axis. Left-right (x) flips contradict laterality in
            reports ("right lower lobe"), so the default flips nothing.
        scale: intensity multiplied by a factor in ``[1 - scale, 1 + scale]``.
        shift: intensity shifted by ``[-shift, shift]`` (in [0, 1] units), then clipped to [0, 1].
        noise_std: Gaussian noise (in [0, 1] units).
    """

    crop_zyx: tuple[int, int, int] | None = None
    flip_prob_zyx: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: float = 0.1
    shift: float = 0.05
    noise_std: float = 0.0

    def __call__(self, vol: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Shape: (D, H, W) float32 in [0, 1] -> (crop or D, H, W) float32 in [0, 1]."""
        if self.crop_zyx is not None:
            if any(c > n for c, n in zip(self.crop_zyx, vol.shape)):
                raise ValueError(f"augment crop {self.crop_zyx} larger than the volume {vol.shape}")
            starts = [int(rng.integers(0, n - c + 1)) for c, n in zip(self.crop_zyx, vol.shape)]
            vol = vol[tuple(slice(s, s + c) for s, c in zip(starts, self.crop_zyx))]
        flips = [ax for ax, p in enumerate(self.flip_prob_zyx) if rng.random() < p]
        if flips:
            vol = np.flip(vol, axis=flips)
        vol = np.array(vol, dtype=np.float32)  # own, contiguous copy
        factor = 1.0 + rng.uniform(-self.scale, self.scale) if self.scale else 1.0
        offset = rng.uniform(-self.shift, self.shift) if self.shift else 0.0
        vol *= np.float32(factor)
        vol += np.float32(offset)
        if self.noise_std:
            vol += rng.normal(0.0, self.noise_std, vol.shape).astype(np.float32)
        return np.clip(vol, 0.0, 1.0, out=vol)


class CTCacheDataset(Dataset):
    """Volumes, reports and labels of a cache folder.

    Args:
        cache_dir: a ``ctxray preprocess`` output folder, or its :class:`~ctxray.data.cachedir.CacheIndex`.
        split: keep only this split (None: all).
        augment: an :class:`Augment` (or its fields as a dict), None for none.
        seed: base seed of the augmentation; call :meth:`set_epoch` each epoch for fresh draws.

    Items: ``{"id": str, "volume": (1, D, H, W) float32 in [0, 1], "report": str,
    "labels": (18,) float32 (NaN where unknown), "index": int}``.
    """

    def __init__(self, cache_dir: str | Path | CacheIndex, split: str | None = None,
                 augment: Augment | dict | None = None, seed: int = 0) -> None:
        if isinstance(cache_dir, CacheIndex):  # already read (one read serves every split)
            self.cache_dir, self.entries, self.spec = cache_dir.root, cache_dir.split(split), cache_dir.spec
        else:
            self.cache_dir = Path(cache_dir)
            self.entries = read_manifest(self.cache_dir, split)
            self.spec = read_spec(self.cache_dir)
        self.augment = Augment(**augment) if isinstance(augment, dict) else augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.entries]

    def labels_matrix(self) -> np.ndarray:
        """All labels. Shape: (N, 18) float32, NaN where unknown."""
        return np.stack([self._labels(e) for e in self.entries]) if self.entries else np.zeros((0, 18), np.float32)

    @staticmethod
    def _labels(entry: dict) -> np.ndarray:
        labels = entry.get("labels")
        if labels is None:
            return np.full(len(CT_RATE_LABELS), np.nan, dtype=np.float32)
        return np.array([np.nan if v is None else v for v in labels], dtype=np.float32)

    def volume(self, index: int) -> np.ndarray:
        """The cached array memory-mapped and decoded, no augmentation. Shape: (D, H, W) float32 in [0, 1]."""
        entry = self.entries[index]
        path = volume_path(self.cache_dir, entry)
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise OSError(f"{path}: cannot read cached volume ({err}); re-run `ctxray preprocess`") from err
        return PreprocessSpec.decode(arr)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        vol = self.volume(index)
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            vol = self.augment(vol, rng)
        return {
            "id": entry["id"],
            "volume": torch.from_numpy(np.ascontiguousarray(vol))[None],
            "report": entry.get("report") or "",
            "labels": torch.from_numpy(self._labels(entry)),
            "index": index,
        }
