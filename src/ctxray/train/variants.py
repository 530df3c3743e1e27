"""The method's ablation variants as ``TrainConfig`` overrides (``a.b=c``), named once for the demo and benches."""

from __future__ import annotations

NO_KD: tuple[str, ...] = ("loss.pkd=0", "loss.srkd=0")
"""Robust contrastive learning only: both distillation terms off (no teacher targets read)."""

PLAIN_CLIP: tuple[str, ...] = ("loss.correction=none", *NO_KD)
"""Plain CLIP InfoNCE: no false-negative correction, no distillation."""

NO_SRKD: tuple[str, ...] = ("loss.srkd=0",)
"""RoCo + pair-wise KD."""

NO_PKD: tuple[str, ...] = ("loss.pkd=0",)
"""RoCo + relation KD."""
