"""Every command module: the two functions the CLI calls, a parser that builds, and a light start-up."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from ctxray.cli import COMMANDS

MODULES = {name: module for name, (module, _) in COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_command_module_builds_its_parser_and_has_run(name: str) -> None:
    module = importlib.import_module(MODULES[name])
    assert callable(module.run) and module.__doc__
    parser = argparse.ArgumentParser(prog=f"ctxray {name}")
    module.add_arguments(parser)
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--help"])
    assert stop.value.code == 0


def test_importing_every_command_pulls_no_heavy_package() -> None:
    """``ctxray --help`` and the parsers stay instant: command modules import the library only in ``run``."""
    code = ("import importlib, json, sys\n"
            f"for m in {sorted(MODULES.values())!r}: importlib.import_module(m)\n"
            "print(json.dumps([k for k in ('torch', 'transformers', 'scipy', 'nibabel', 'pydicom') "
            "if k in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
