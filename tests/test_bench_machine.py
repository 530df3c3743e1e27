"""Every benchmark under bench/ prints the machine its figures were measured on (issue 18): a figure measured on
one machine is a fact about that machine, so a figure without it cannot be compared or trusted."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# scripts that measure nothing themselves: they tabulate the JSON another benchmark wrote (which names its machine)
TABULATE_ONLY = {"summarise_generate_planned.py", "cider_breakdown.py"}


def _scripts() -> list[Path]:
    return sorted(p for p in BENCH.rglob("*.py") if p.name not in TABULATE_ONLY)


def test_there_are_benchmarks_to_check() -> None:
    assert len(_scripts()) >= 20 and all((BENCH / n).is_file() for n in TABULATE_ONLY)


@pytest.mark.parametrize("script", _scripts(), ids=lambda p: str(p.relative_to(BENCH)))
def test_benchmark_names_its_machine(script: Path) -> None:
    text = script.read_text()
    assert "describe_machine" in text or "machine_info" in text, (
        f"{script}: prints figures without the machine (ctxray.utils.machine.describe_machine)")
