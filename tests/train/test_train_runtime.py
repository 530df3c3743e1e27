"""Precision choice: ``auto`` never autocasts to bf16 on a CPU without native bf16; asking for it there warns."""

from __future__ import annotations

import logging

import pytest
import torch

from ctxray.train import runtime


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Set what the CPU bf16 detection answers."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)

    return set_native


@pytest.mark.parametrize("native", [False, True])
def test_auto_on_cpu_is_fp32_whatever_the_cpu(cpu_bf16, native, caplog):
    cpu_bf16(native)
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert runtime.resolve_precision("auto", use_cuda=False) is None
        rt = runtime.setup_runtime("cpu", "auto")
    assert rt.dtype is None and rt.device.type == "cpu" and not caplog.records


def test_auto_on_a_bf16_gpu_is_bf16(monkeypatch, cpu_bf16):
    cpu_bf16(False)  # the CPU does not matter on a GPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_precision("auto", use_cuda=True) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_precision("auto", use_cuda=True) is None


def test_explicit_bf16_on_an_emulating_cpu_warns_with_the_measured_cost(cpu_bf16, caplog):
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert runtime.resolve_precision("bf16", use_cuda=False) is torch.bfloat16  # honoured, not refused
    (record,) = caplog.records
    assert "emulated" in record.getMessage() and "14-30x slower than fp32" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert runtime.setup_runtime("cpu", "bf16").dtype is torch.bfloat16
        assert runtime.resolve_precision("bf16", use_cuda=False, warn=False) is torch.bfloat16  # ranks > 0
    assert len(caplog.records) == 1


def test_explicit_bf16_on_a_native_cpu_or_a_gpu_does_not_warn(cpu_bf16, caplog):
    cpu_bf16(True)
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert runtime.resolve_precision("bf16", use_cuda=False) is torch.bfloat16
    cpu_bf16(False)
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        assert runtime.resolve_precision("bf16", use_cuda=True) is torch.bfloat16
    assert not caplog.records


def test_fp32_fp16_and_bad_values():
    assert runtime.resolve_precision("fp32", use_cuda=True) is None
    assert runtime.resolve_precision("fp16", use_cuda=True) is torch.float16
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        runtime.resolve_precision("fp16", use_cuda=False)
    with pytest.raises(ValueError, match="'half'.*expected auto"):
        runtime.resolve_precision("half", use_cuda=False)
