"""The machine description benchmarks print: CPU model and flags parsed from cpuinfo, native bf16 detected."""

from __future__ import annotations

import torch

from ctxray.utils import machine as M

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx2 avx512f {extra}

processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu sse2 avx2
"""
ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd sve {extra}
CPU part\t: 0xd40
"""


def _write(tmp_path, text, extra=""):
    path = tmp_path / "cpuinfo"
    path.write_text(text.format(extra=extra))
    return path


def test_cpu_model_and_flags_come_from_the_first_cpu(tmp_path):
    path = _write(tmp_path, X86, "avx512_bf16")
    assert M.cpu_model(path) == "AMD EPYC 9654 96-Core Processor"
    assert {"avx2", "avx512f", "avx512_bf16"} <= M.cpu_flags(path)
    assert M.cpu_model(_write(tmp_path, ARM)) == "0xd40"


def test_native_bf16_only_with_bf16_instructions(tmp_path):
    assert not M.cpu_has_native_bf16(_write(tmp_path, X86))  # avx512f alone converts, it does not compute bf16
    assert M.cpu_has_native_bf16(_write(tmp_path, X86, "avx512_bf16"))
    assert M.cpu_has_native_bf16(_write(tmp_path, X86, "amx_tile amx_bf16"))
    assert M.cpu_has_native_bf16(_write(tmp_path, ARM, "bf16"))
    assert not M.cpu_has_native_bf16(_write(tmp_path, ARM))
    assert not M.cpu_has_native_bf16(tmp_path / "missing")  # unknown is treated as emulated


def test_missing_cpuinfo_falls_back_without_failing(tmp_path):
    assert M.cpu_model(tmp_path / "missing")  # platform.processor() or "unknown CPU"
    assert M.cpu_flags(tmp_path / "missing") == frozenset()


def test_machine_info_and_description_name_cpu_cores_threads_and_gpu(tmp_path):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        info = M.machine_info(_write(tmp_path, X86, "amx_bf16"))
    finally:
        torch.set_num_threads(old)
    assert info["cpu_model"] == "AMD EPYC 9654 96-Core Processor"
    assert info["torch_threads"] == 1 and info["cores"] >= info["cores_usable"] >= 1
    assert info["cpu_native_bf16"] is True
    line = M.describe_machine({**info, "gpu": None, "cores": 2, "cores_usable": 2})
    assert "AMD EPYC 9654" in line and "2 cores," in line and "1 thread(s)" in line
    assert "GPU: none" in line and "bf16 native" in line
    line = M.describe_machine({**info, "gpu": "NVIDIA H200", "cores": 16, "cores_usable": 4, "load_average": None})
    assert "16 cores (4 usable)" in line and "GPU: NVIDIA H200" in line and "load average" not in line
