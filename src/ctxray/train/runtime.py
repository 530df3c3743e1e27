"""Where and how a run executes: device, ranks, mixed precision, and the rank-0 loggers."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctxray.train import distributed as D
from ctxray.utils.io import atomic_write_text
from ctxray.utils.machine import cpu_has_native_bf16, cpu_model

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """This process's place in the run.

    Args:
        rank, world_size: from the process group (0 and 1 for a plain process).
        device: where the model lives.
        dtype: autocast dtype, or None for fp32.
    """

    rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype | None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (a no-op in fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def barrier(self) -> None:
        if D.is_distributed():
            torch.distributed.barrier()


# what emulated bf16 costs per training step of vit3d_small (fwd+bwd+AdamW) on 2-core AMD EPYCs with AVX2 only:
# 21.5 vs 1.5 CPU s at 100x200x200, 1 thread (bench/bench_train.py here); 186 vs 6 s at 240x480x480 (issue 18)
EMULATED_BF16_COST = "measured 14-30x slower than fp32 per training step of vit3d_small on an AVX2-only AMD EPYC"


def resolve_precision(precision: str, use_cuda: bool, warn: bool = True) -> torch.dtype | None:
    """The autocast dtype for a precision setting on this machine.

    ``auto`` is bf16 on a GPU that supports it and fp32 everywhere else: never bf16 on a CPU without native bf16
    (AVX512-BF16, AMX-BF16, ARM BF16), where it is emulated and much slower, and not on a CPU with it either,
    because no gain has been measured there (ask for ``bf16`` explicitly). An explicit ``bf16`` on a CPU without
    native bf16 is honoured with a warning.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        use_cuda: the run is on a GPU.
        warn: log the emulated-bf16 warning (rank 0 only).

    Returns:
        ``torch.bfloat16``, ``torch.float16``, or None for fp32.

    Raises:
        ValueError: for an unknown precision, or fp16 without a GPU.
    """
    if precision == "auto":
        return torch.bfloat16 if use_cuda and torch.cuda.is_bf16_supported() else None
    if precision == "fp32":
        return None
    if precision == "bf16":
        if not use_cuda and not cpu_has_native_bf16() and warn:
            log.warning("precision='bf16' on a CPU without native bf16 (%s; no AVX512-BF16/AMX/ARM BF16): autocast "
                        "is emulated there and much slower than fp32 (%s); use precision=fp32 or auto on this CPU",
                        cpu_model(), EMULATED_BF16_COST)  # fmt: skip
        return torch.bfloat16
    if precision == "fp16":
        if not use_cuda:
            raise ValueError("precision='fp16' needs a GPU; use bf16 or fp32 on CPU")
        return torch.float16
    raise ValueError(f"precision={precision!r}: expected auto, fp32, bf16 or fp16")


def setup_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """Join the process group when launched by torchrun, pick the device and autocast dtype.

    Args:
        device: ``auto`` (the local rank's GPU if there is one), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 on a GPU that supports it, else fp32), ``fp32``, ``bf16``, ``fp16``;
            see :func:`resolve_precision`.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available")
    D.setup_distributed("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    dtype = resolve_precision(precision, use_cuda, warn=D.rank() == 0)
    return Runtime(rank=D.rank(), world_size=D.world_size(), device=dev, dtype=dtype)


class RunLogger:
    """Rank-0 sink for scalars: ``RUN/log.jsonl`` (every row) and TensorBoard (``RUN/tb``).

    Args:
        out_dir: the run folder.
        enabled: False on ranks other than 0 (every call is then a no-op).
        tensorboard: also write TensorBoard event files.
        resume_step: on resume, rows logged after this optimiser step are dropped (they will be
            logged again by the continued run).
    """

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool, resume_step: int | None = None) -> None:
        self.path = Path(out_dir) / "log.jsonl"
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            keep = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step)
            except ImportError:
                log.warning("tensorboard is not installed; logging to log.jsonl only")

    def write(self, row: dict[str, Any], prefix: str = "train") -> None:
        """Append one row (floats rounded for reading) and mirror numbers to TensorBoard."""
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            step = int(row.get("step", 0))
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
