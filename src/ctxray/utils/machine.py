"""What machine a figure was measured on: CPU model, cores, torch threads, GPU, native bf16 support.

Benchmarks print :func:`describe_machine` beside their figures, so a figure is never read without the
machine it came from; the training runtime asks :func:`cpu_has_native_bf16` before autocasting to bf16 on a CPU.

Example::

    from ctxray.utils.machine import describe_machine
    print(describe_machine())
    # machine: AMD EPYC (x86_64), 2 cores, torch 2.13.0+cpu with 1 thread(s), CPU bf16 emulated, GPU: none, ...
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["cpu_flags", "cpu_has_native_bf16", "cpu_model", "describe_machine", "machine_info"]

CPUINFO = Path("/proc/cpuinfo")
# x86: AVX512-BF16 or AMX-BF16 instructions; aarch64: the BF16 extension ("bf16" in Features)
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def _cpuinfo_fields(path: Path) -> dict[str, str]:
    """The first value of each ``key : value`` line of a cpuinfo file ({} when unreadable)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_model(path: Path = CPUINFO) -> str:
    """CPU model name from ``/proc/cpuinfo`` (``model name``; ARM: ``Hardware`` or ``CPU part``), else
    ``platform.processor()``, else ``"unknown CPU"``."""
    fields = _cpuinfo_fields(path)
    for key in ("model name", "hardware", "cpu model", "cpu part"):
        if fields.get(key):
            return fields[key]
    return platform.processor() or "unknown CPU"


def cpu_flags(path: Path = CPUINFO) -> frozenset[str]:
    """Instruction-set flags of the first CPU (x86 ``flags``, ARM ``Features``); empty when unknown."""
    fields = _cpuinfo_fields(path)
    return frozenset((fields.get("flags") or fields.get("features") or "").split())


def cpu_has_native_bf16(path: Path = CPUINFO) -> bool:
    """True when the CPU executes bf16 arithmetic natively (AVX512-BF16, AMX-BF16 or ARM BF16).

    Without it, bf16 autocast on the CPU is emulated by conversions around fp32 arithmetic: measured 14x (100x200x200)
    to 30x (240x480x480) slower than fp32 per training step of ``vit3d_small`` on 2-core AMD EPYCs with AVX2 only.
    """
    return bool(cpu_flags(path) & NATIVE_BF16_FLAGS)


def _cores() -> tuple[int, int]:
    visible = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = visible
    return visible, usable


def machine_info(path: Path = CPUINFO) -> dict[str, Any]:
    """The machine as a JSON-ready dict.

    Returns:
        ``cpu_model``, ``arch``, ``cores`` (visible), ``cores_usable`` (this process's affinity),
        ``torch_threads``, ``torch`` (version), ``gpu`` (name of CUDA device 0, or None), ``cpu_native_bf16``,
        ``load_average`` (1-minute, None where unknown).
    """
    import torch

    visible, usable = _cores()
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_model": cpu_model(path),
        "arch": platform.machine(),
        "cores": visible,
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": gpu,
        "cpu_native_bf16": cpu_has_native_bf16(path),
        "load_average": load,
    }


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line for a benchmark's output, from :func:`machine_info` (taken now when ``info`` is None)."""
    m = machine_info() if info is None else info
    usable = "" if m["cores_usable"] == m["cores"] else f" ({m['cores_usable']} usable)"
    bf16 = "native" if m["cpu_native_bf16"] else "emulated"
    load = "" if m.get("load_average") is None else f", load average {m['load_average']:.2f}"
    return (f"machine: {m['cpu_model']} ({m['arch']}), {m['cores']} cores{usable}, torch {m['torch']} with "
            f"{m['torch_threads']} thread(s), CPU bf16 {bf16}, GPU: {m['gpu'] or 'none'}{load}")  # fmt: skip
