"""The DICOM command-line path end to end: ``ctxray preprocess`` on one series vs ``dcm2niix``, side by side.

A chest-like int16 phantom (512x512xS, 0.7x0.7x1.25 mm) is written as an axial CT series (one file per slice,
shuffled names). Each tool then runs as a fresh process on that folder, ``--n`` times, alternating:

* ``dcm2niix -z n -o OUT SERIES`` (its default: an uncompressed ``.nii`` + JSON sidecar; no resampling);
* ``python -m ctxray.cli preprocess SERIES --out C --preset P`` (scan and sort the headers, read the pixels,
  resample to the preset, window, float16, SHA-256, manifest), into a fresh cache each time;
* ``python -c "import numpy"``: the interpreter + NumPy start-up, the floor of any Python CLI.

Figures are medians of wall and CPU seconds (user + system of the child, which other processes on shared
cores barely move); the ratios use CPU seconds. ``--before-src DIR`` runs a second ctxray source tree
(e.g. the main branch's ``src``) in the same loop, so before and after share the machine's load. The bench
also checks that ``ctxray``'s reading of the series gives the same HU, spacing and orientation as
dcm2niix's NIfTI read by ``ctxray.data.readers``.

    .venv/bin/python bench/bench_dicom.py [--slices 40] [--n 7] [--presets demo] [--before-src ../main/src]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import SPACING_ZYX, phantom  # noqa: E402

GOAL = 3.0


def run_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s) of one fresh process; exits the bench if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def dcm2niix_version(tool: str) -> str:
    """The version a dcm2niix executable reports (builds differ in speed: the ratio names the one used)."""
    done = subprocess.run([tool, "--version"], capture_output=True, text=True)
    words = [w for w in (done.stdout + done.stderr).split() if w.startswith("v1.")]
    return words[-1] if words else "(version unknown)"


def check_same_volume(series: Path, nifti_dir: Path) -> str:
    """ctxray's read of the series vs dcm2niix's NIfTI read by ctxray: equal HU, spacing, RAS orientation."""
    from ctxray.data.readers import read_volume_raw

    ours = read_volume_raw(series)
    theirs = read_volume_raw(next(nifti_dir.glob("*.nii")))
    hu_ours = ours.values * np.float64(ours.slope) + ours.intercept
    hu_theirs = theirs.values * np.float64(theirs.slope) + theirs.intercept
    assert hu_ours.shape == hu_theirs.shape, (hu_ours.shape, hu_theirs.shape)
    assert np.array_equal(hu_ours, hu_theirs), "ctxray and dcm2niix read different HU"
    assert np.allclose(ours.spacing_zyx, theirs.spacing_zyx, atol=1e-4), (ours.spacing_zyx, theirs.spacing_zyx)
    return f"same HU voxels, spacing and orientation as dcm2niix's NIfTI {hu_ours.shape} (checked)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--n", type=int, default=7)
    ap.add_argument("--presets", nargs="+", default=["demo"])
    ap.add_argument("--before-src", default=None, help="another ctxray src folder, run in the same loop")
    ap.add_argument("--dcm2niix", nargs="+", default=None,
                    help="dcm2niix executables to compare with, in the same loop (default: the one on PATH); "
                         "ratios use the first")
    args = ap.parse_args()
    from ctxray.utils.machine import describe_machine

    asked = args.dcm2niix or ["dcm2niix"]
    tools = [shutil.which(tool) for tool in asked]
    if None in tools:
        sys.exit(f"{asked[tools.index(None)]}: no such dcm2niix executable (Debian/Ubuntu: apt-get install dcm2niix; "
                 f"or pip install dcm2niix)")
    versions = {tool: dcm2niix_version(tool) for tool in tools}
    names = {tool: f"dcm2niix {versions[tool]}" for tool in tools}
    src = str(Path(__import__("ctxray").__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    trees = {"ours": env}
    if args.before_src:
        trees = {"before": {**env, "PYTHONPATH": str(Path(args.before_src).resolve())}, "ours": env}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        from ctxray.data.dicom import write_ct_series

        write_ct_series(tmp / "series", phantom((args.slices, 512, 512)), SPACING_ZYX)
        size = sum(p.stat().st_size for p in (tmp / "series").iterdir()) / 1e6
        runs: dict[str, list[tuple[float, float]]] = {}

        def add(name: str, cmd: list[str], run_env: dict[str, str], clear: Path) -> None:
            shutil.rmtree(clear, ignore_errors=True)
            clear.mkdir(parents=True)
            runs.setdefault(name, []).append(run_child(cmd, run_env))

        for _ in range(args.n):  # alternate, so a change in load hits every row alike
            for tool in tools:
                add(names[tool], [tool, "-z", "n", "-o", str(tmp / "nii"), str(tmp / "series")], env, tmp / "nii")
            add("python + numpy", [sys.executable, "-c", "import numpy"], env, tmp / "none")
            for preset in args.presets:
                for tree, tree_env in trees.items():
                    cache = tmp / f"cache_{tree}_{preset}"
                    cmd = [sys.executable, "-m", "ctxray.cli", "preprocess", str(tmp / "series"), "--out", str(cache),
                           "--preset", preset]
                    add(f"ctxray preprocess --preset {preset} ({tree})", cmd, tree_env, cache)
        same = check_same_volume(tmp / "series", tmp / "nii")
    print(describe_machine() + " (other processes may share these cores: absolute times vary, CPU-time ratios "
          "less)")
    print(f"one axial series, 512x512x{args.slices} uint16 + rescale ({size:.0f} MB, {args.slices} files), "
          f"median of {args.n} fresh processes: wall s / CPU s (ratios from CPU s)")
    print("  " + "; ".join(f"dcm2niix {versions[t]}: {t}" for t in tools))
    ref = statistics.median(c for _, c in runs[names[tools[0]]])
    for name, values in runs.items():
        wall, cpu = statistics.median(w for w, _ in values), statistics.median(c for _, c in values)
        line = f"  {name:<44} {wall:6.3f} / {cpu:6.3f}   = {cpu / ref:5.1f}x {names[tools[0]]}"
        if name.startswith("ctxray"):
            line += f"   (goal <= {GOAL:g}x: {'met' if cpu / ref <= GOAL else 'NOT met'})"
        print(line)
    print(f"  {same}")


if __name__ == "__main__":
    main()
