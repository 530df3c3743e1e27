"""The README's "Using a model on a scan" examples run as written (commands and Python)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from ctxray.cli import main

from .infer_helpers import synthetic_ct, write_dicom_series, write_nifti

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Using a model on a scan"


def _blocks(lang: str) -> list[str]:
    text = README.read_text()
    assert SECTION in text, f"README.md has no '{SECTION}' section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


@pytest.fixture
def workdir(tmp_path, tiny_run, tiny_metrics, monkeypatch):
    spacing = (9.0, 8.0, 8.0)
    hu = synthetic_ct()
    shutil.copytree(tiny_run, tmp_path / "RUN")
    (tmp_path / "EVAL").mkdir()
    shutil.copy(tiny_metrics, tmp_path / "EVAL" / "metrics.json")
    write_nifti(tmp_path / "chest_ct.nii.gz", hu, spacing)
    write_dicom_series(tmp_path / "dicom_series", hu, spacing)
    (tmp_path / "more_scans").mkdir()
    write_nifti(tmp_path / "more_scans" / "other.nii.gz", synthetic_ct(seed=1), spacing)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_commands_and_python_run(workdir):
    (bash,) = _blocks("bash")
    for line in bash.strip().splitlines():
        argv = shlex.split(line.split("#", 1)[0])
        assert argv[0] == "ctxray"
        assert main(argv[1:]) == 0, line
    summary = json.loads((workdir / "predictions" / "summary.json").read_text())
    assert summary["n_ok"] == 3 and summary["n_error"] == 0
    (python,) = _blocks("python")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(python, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    assert len(printed) == 18 + 1
    assert printed[-1] == "(20, 40, 44) (32,) (2, 32)"
