"""Preprocessing throughput and memory: ours vs the read floor vs a MONAI Compose, side by side.

A chest-like 512x512xS int16 phantom (HU, noise, 0.7x0.7x1.25 mm, stored LPS as scanners do) is written
as ``.nii.gz`` and as an axial DICOM series (one file per slice). For each format:

* floor: the time just to decompress and read the file(s) into an array (gzip + frombuffer for NIfTI;
  ``pydicom.dcmread`` + ``pixel_array`` of every slice for DICOM);
* ours: ``ctxray.data.cache.process_item`` (read, reorient to RAS, rescale, one trilinear resample that
  also crops/pads, window, float16 encode, checksum, atomic .npy write) per preset;
* MONAI: ``LoadImage -> EnsureChannelFirst -> Orientation(RAS) -> Spacing -> ScaleIntensityRange ->
  ResizeWithPadOrCrop`` + the same float16 .npy write (torch limited to one thread, as ours is single-threaded).

Each format's first preset is checked voxel for voxel: the cached array must equal ``encode(apply(...))``,
the plain NumPy path (float32 resample and window, then ``astype``), bit for bit (asserted); MONAI's output is
compared and its difference printed (its output grid starts at voxel 0 where ours is centred, so it differs).

Then volumes/s with 1 and 2 worker processes (``build_cache``), and the peak resident memory of one
volume in a fresh process (ours at S and 1000 slices, MONAI at S). Times are medians over ``--n`` runs,
as wall and CPU seconds; the ratios use CPU seconds, which other processes on shared cores barely move.
Files are read from the page cache (warm). Goals printed beside the figures: ours within 2x of the
floor, at least 5x faster than MONAI, a 512x512x1000 volume in a few GB.

    .venv/bin/python bench/bench_preprocess.py [--slices 300] [--n 3] [--presets ctclip merlin demo]
        [--monai-presets ctclip merlin] [--copies 4] [--big-slices 1000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")
SPACING_ZYX = (1.25, 0.7, 0.7)


def phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Chest-like HU volume (D, H, W) int16: body, lungs, spine, table-free air, 15 HU noise."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    sl = np.full((h, w), -1000.0, np.float32)
    sl[(y / 0.7) ** 2 + (x / 0.9) ** 2 <= 1] = 40.0
    for cx in (-0.42, 0.42):
        sl[(y / 0.5) ** 2 + ((x - cx) / 0.33) ** 2 <= 1] = -850.0
    sl[((y - 0.5) / 0.12) ** 2 + (x / 0.12) ** 2 <= 1] = 700.0
    out = np.empty(shape, np.int16)
    for k in range(d):  # slice by slice: bounded memory even for 1000 slices
        out[k] = np.clip(sl + rng.normal(0, 15, (h, w)).astype(np.float32), -1024, 3071)
    return out


def write_nifti(path: Path, hu: np.ndarray) -> None:
    import nibabel as nib

    sz, sy, sx = SPACING_ZYX
    aff = np.diag([-sx, -sy, sz, 1.0])  # stored LPS: the reader must flip x and y
    aff[:3, 3] = [(hu.shape[2] - 1) * sx, (hu.shape[1] - 1) * sy, 0.0]
    nib.save(nib.Nifti1Image(hu[:, ::-1, ::-1].transpose(2, 1, 0), aff), str(path))


def floor_nifti(path: Path) -> None:
    data = gzip.decompress(path.read_bytes())
    np.frombuffer(data, dtype=np.int16, offset=352)


def floor_dicom(folder: Path) -> None:
    import pydicom

    np.stack([pydicom.dcmread(str(p)).pixel_array for p in sorted(folder.iterdir())])


def item_for(path: Path, fmt: str, item_id: str = "v"):
    from ctxray.data.ingest import WorkItem, discover

    if fmt == "nifti":
        return WorkItem(id=item_id, kind="nifti", source=str(path), payload=path)
    item = discover(path, kind="dicom").items[0]
    item.id = item_id
    return item


def ours(path: Path, fmt: str, preset: str, out: Path) -> None:
    from ctxray.data.cache import process_item
    from ctxray.data.spec import get_preset

    process_item(item_for(path, fmt), get_preset(preset), out)


def monai_chain(path: Path, fmt: str, preset: str, out: Path) -> None:
    from monai.transforms import (
        Compose,
        EnsureChannelFirst,
        LoadImage,
        Orientation,
        ResizeWithPadOrCrop,
        ScaleIntensityRange,
        Spacing,
    )

    from ctxray.data.spec import get_preset

    spec = get_preset(preset)
    chain = Compose([
        LoadImage(image_only=True, reader="NibabelReader" if fmt == "nifti" else "PydicomReader"),
        EnsureChannelFirst(), Orientation(axcodes="RAS"),
        Spacing(pixdim=spec.spacing_zyx[::-1], mode="bilinear"),
        ScaleIntensityRange(a_min=spec.hu_min, a_max=spec.hu_max, b_min=0.0, b_max=1.0, clip=True),
        ResizeWithPadOrCrop(spatial_size=spec.shape_zyx[::-1]),
    ])
    arr = np.asarray(chain(str(path)))[0].transpose(2, 1, 0).astype(np.float16)
    np.save(out / "monai.npy", arr)


def check_voxels(path: Path, fmt: str, preset: str, tmp: Path, monai: bool) -> str:
    """Assert that the cached volume equals ``encode(apply(...))``, the plain NumPy path (float32 resample,
    window, ``astype``), voxel for voxel; with ``monai``, say how far MONAI's output is (its grid differs).
    """
    from ctxray.data.ingest import read_item
    from ctxray.data.spec import get_preset

    spec = get_preset(preset)
    ours(path, fmt, preset, tmp)
    if monai:
        monai_chain(path, fmt, preset, tmp)
    raw = read_item(item_for(path, fmt))
    cached = np.load(tmp / "volumes" / "v.npy")
    plain = spec.encode(spec.apply(raw.values, raw.spacing_zyx, slope=raw.slope, intercept=raw.intercept))
    assert cached.dtype == plain.dtype and np.array_equal(cached.view(np.uint8), plain.view(np.uint8)), \
        f"{fmt} {preset}: the cache differs from encode(apply(...))"
    text = "cache == encode(apply()) bit for bit (asserted)"
    if monai:
        other = np.load(tmp / "monai.npy")
        diff = np.abs(cached.astype(np.float32) - other.astype(np.float32))
        text += (f"; MONAI's output differs (grid placed from voxel 0, ours centred): max |diff| {diff.max():.3f}, "
                 f"{(diff == 0).mean():.0%} of voxels equal")
    return text


def timed(fn, n: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds of this process) over ``n`` runs.

    CPU time is what a core spends: unlike wall time it barely moves when other processes share the cores.
    """
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def vm_hwm_kib() -> int:
    """This process's peak resident set (VmHWM, KiB); unlike ru_maxrss it is not inherited over fork+exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_gb(args: list[str]) -> float:
    """Peak RSS (GB) of a fresh process running this file with ``--peak`` arguments."""
    done = subprocess.run([sys.executable, __file__, "--peak", *args], check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024**2


def workers_throughput(path: Path, fmt: str, preset: str, tmp: Path, copies: int, workers: int) -> float:
    from ctxray.data.cache import build_cache
    from ctxray.data.spec import get_preset

    items = [item_for(path, fmt, f"v{i}") for i in range(copies)]
    out = tmp / f"cache_{fmt}_{workers}"
    t = time.perf_counter()
    build_cache(items, out, get_preset(preset), workers=workers)
    return copies / (time.perf_counter() - t)


def bench_format(fmt: str, path: Path, args, tmp: Path) -> dict:
    row = {"floor": timed(lambda: floor_nifti(path) if fmt == "nifti" else floor_dicom(path), args.n)}
    for preset in args.presets:
        row[f"ours_{preset}"] = timed(lambda p=preset: ours(path, fmt, p, tmp), args.n)
    monai_presets = [] if args.skip_monai else args.monai_presets
    if monai_presets:
        monai_chain(path, fmt, monai_presets[0], tmp)  # warm-up: imports
    for preset in monai_presets:
        row[f"monai_{preset}"] = timed(lambda p=preset: monai_chain(path, fmt, p, tmp), max(1, args.n - 1))
    floor = row["floor"][1]
    checks = {p: check_voxels(path, fmt, p, tmp, p in monai_presets) for p in args.presets[:1]}
    print(f"\n[{fmt}] 512x512x{args.slices} int16, median of {args.n}: wall s / CPU s (ratios from CPU time)")
    print(f"  read floor (decompress + read)     {row['floor'][0]:6.2f} / {floor:5.2f}")
    for preset in args.presets:
        w, c = row[f"ours_{preset}"]
        print(f"  ours, preset {preset:<8}           {w:6.2f} / {c:5.2f}   = {c / floor:4.2f}x floor   (goal <= 2x)")
    for preset in monai_presets:
        w, c = row[f"monai_{preset}"]
        ratio = c / row[f"ours_{preset}"][1]
        print(f"  MONAI Compose, preset {preset:<8}  {w:6.2f} / {c:5.2f}   ours is {ratio:4.1f}x faster"
              "   (goal >= 5x)")
    for preset, text in checks.items():
        print(f"  voxels, preset {preset}: {text}")
    return row


def main() -> None:
    import torch

    torch.set_num_threads(1)  # MONAI's tensors: one core, like ours ("per core" figures)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--presets", nargs="+", default=["ctclip", "merlin", "demo"])
    ap.add_argument("--copies", type=int, default=4, help="volumes for the worker-count throughput")
    ap.add_argument("--big-slices", type=int, default=1000, help="slices of the peak-memory volume (0: skip)")
    ap.add_argument("--monai-presets", nargs="+", default=["ctclip", "merlin"], help="presets run through MONAI too")
    ap.add_argument("--skip-monai", action="store_true")
    ap.add_argument("--peak", nargs=4, metavar=("WHICH", "PATH", "FMT", "PRESET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak:
        which, path, fmt, preset = args.peak
        with tempfile.TemporaryDirectory() as d:
            (ours if which == "ours" else monai_chain)(Path(path), fmt, preset, Path(d))
        print(vm_hwm_kib())
        return
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t = time.perf_counter()
        hu = phantom((args.slices, 512, 512))
        write_nifti(tmp / "vol.nii.gz", hu)
        from ctxray.data.dicom import write_ct_series
        from ctxray.utils.machine import describe_machine

        write_ct_series(tmp / "dicom", hu, SPACING_ZYX)
        print(describe_machine() + " (other processes may share these cores: absolute times vary, ratios less)")
        print(f"generated 512x512x{args.slices}: .nii.gz {(tmp / 'vol.nii.gz').stat().st_size / 1e6:.0f} MB, "
              f"DICOM {sum(p.stat().st_size for p in (tmp / 'dicom').iterdir()) / 1e6:.0f} MB "
              f"({time.perf_counter() - t:.0f} s)")
        results = {fmt: bench_format(fmt, p, args, tmp) for fmt, p in (("nifti", tmp / "vol.nii.gz"),
                                                                        ("dicom", tmp / "dicom"))}
        preset = args.presets[0]
        print(f"\nthroughput, {args.copies} volumes, preset {preset} (build_cache):")
        for fmt, p in (("nifti", tmp / "vol.nii.gz"), ("dicom", tmp / "dicom")):
            rates = [workers_throughput(p, fmt, preset, tmp, args.copies, w) for w in (1, 2)]
            results[fmt]["vol_per_s"] = rates
            print(f"  {fmt:<6} 1 worker {rates[0]:.2f} vol/s   2 workers {rates[1]:.2f} vol/s "
                  f"({rates[1] / rates[0]:.2f}x)")
        print("\npeak resident memory of one volume in a fresh process:")
        mem = {"ours": peak_rss_gb(["ours", str(tmp / "vol.nii.gz"), "nifti", preset])}
        print(f"  ours  512x512x{args.slices} .nii.gz -> {preset}: {mem['ours']:.2f} GB")
        if not args.skip_monai:
            mem["monai"] = peak_rss_gb(["monai", str(tmp / "vol.nii.gz"), "nifti", preset])
            print(f"  MONAI 512x512x{args.slices} .nii.gz -> {preset}: {mem['monai']:.2f} GB")
        if args.big_slices:
            del hu
            write_nifti(tmp / "big.nii.gz", phantom((args.big_slices, 512, 512), seed=1))
            mem["ours_big"] = peak_rss_gb(["ours", str(tmp / "big.nii.gz"), "nifti", preset])
            print(f"  ours  512x512x{args.big_slices} .nii.gz -> {preset}: {mem['ours_big']:.2f} GB   (goal: a few GB)")
        print("  (reference, quoted in issue 3, not measured here: CT-CLIP's loader 3.84 s and 5.6 GB for 512x512x300)")
        print(json.dumps({"results": results, "peak_gb": mem}, indent=None))


if __name__ == "__main__":
    main()
