"""Throughput of `ctxray predict`, end to end from a DICOM folder, at the demo and Merlin-like presets.

For each preset: a model folder is exported from a randomly initialised run of the default encoder
(`vit3d_small`) at the preset's input shape (weights do not change the cost), a chest-like phantom is
written as an axial DICOM series (one file per slice), and `ctxray.inference.predict.predict` runs on
it N times (the folder is listed N times) after one warm-up scan. Printed: seconds per stage, and scans
per minute end to end without heatmaps and with 3 positive findings per scan (thresholds set so), i.e.
3 relevance maps (Grad-CAM: a forward and a backward pass, mapped back and written as NIfTI) and 3
overlays in the HTML report. The DICOM files are read from the page cache after the first
pass, so the read time is a warm-cache figure.

    .venv/bin/python bench/bench_predict.py [--presets demo merlin] [--n 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctxray.utils.machine import describe_machine

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")

# input scans written as DICOM: (shape D, H, W), spacing (z, y, x) mm
INPUTS = {
    "demo": ((64, 128, 128), (5.0, 2.7, 2.7)),  # the synthetic world's demo volumes
    "merlin": ((240, 512, 512), (1.25, 0.7, 0.7)),  # a typical clinical chest CT reconstruction
}


def phantom(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A chest-like HU volume: body, two lungs, spine, a nodule; RAS (D, H, W)."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    z = np.linspace(-1, 1, d, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, h, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, w, dtype=np.float32)[None, None, :]
    hu = np.full(shape, -1000.0, np.float32)
    body = np.broadcast_to((y / 0.7) ** 2 + (x / 0.9) ** 2 <= 1, shape)
    hu[body] = 40.0
    for cx in (-0.42, 0.42):
        lung = ((y / 0.5) ** 2 + ((x - cx) / 0.33) ** 2 <= 1) & (np.abs(z) < 0.85)
        hu[lung] = -850.0
    hu[np.broadcast_to(((y - 0.5) / 0.12) ** 2 + (x / 0.12) ** 2 <= 1, shape)] = 700.0
    hu[(z - 0.2) ** 2 + (y + 0.1) ** 2 + (x - 0.4) ** 2 <= 0.004] = 30.0
    hu += rng.normal(0, 15, shape).astype(np.float32)
    return np.clip(hu, -1024.0, 3000.0)


def make_model_dir(root: Path, preset: str) -> Path:
    """Export a model folder of a random-weight default-encoder run at the preset's input shape."""
    from ctxray.data.spec import get_preset
    from ctxray.inference.export import export_model
    from ctxray.labels import load_labels
    from ctxray.models.dual import DualEncoder, DualEncoderConfig
    from ctxray.models.text import TextEncoderConfig, Tokenizer
    from ctxray.train.checkpoint import save_checkpoint
    from ctxray.train.config import DataConfig, TrainConfig

    spec = get_preset(preset)
    labels = load_labels()
    tok = Tokenizer.train([p for n in labels.names for s in labels.prompts(n) for p in s], vocab_size=2000,
                          min_frequency=1)
    cache = root / f"cache_{preset}"
    cache.mkdir()
    spec.save(cache / "spec.json")
    cfg = TrainConfig(model=DualEncoderConfig(encoder="vit3d_small", input_shape=spec.shape_zyx,
                                              text=TextEncoderConfig(vocab_size=tok.vocab_size)),
                      data=DataConfig(cache=str(cache)))
    torch.manual_seed(0)
    run = root / f"run_{preset}"
    save_checkpoint(run / "checkpoints" / "best", DualEncoder(cfg.model).eval(), tok, cfg, metrics={})
    return export_model(run, root / f"model_{preset}")


def stage_times(model, scan: Path) -> dict[str, float]:
    """Seconds of each stage for one scan (read, preprocess, embed + zero-shot, one heatmap, HTML)."""
    from ctxray.inference.html import ReportPage, write_report_html

    t = {}
    t0 = time.perf_counter()
    vol = model.read(scan)
    t["read DICOM"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = model.preprocess(vol)
    t["preprocess (spec.apply)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    findings = model.findings_from_embedding(model.embed_input(x)[0])
    t["embed + zero-shot"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    heat, _ = model.explain_input(x, "Lung nodule", vol.hu.shape, vol.spacing_zyx)
    t["one heatmap (Grad-CAM + invert)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        write_report_html(Path(tmp) / "r.html", ReportPage("s", vol.hu, vol.spacing_zyx,
                                                             [f.to_dict() for f in findings], {"Lung nodule": heat}))
    t["HTML report (1 overlay)"] = time.perf_counter() - t0
    return t


def bench(preset: str, n: int, root: Path) -> dict:
    import ctxray
    from ctxray.data.dicom import write_ct_series
    from ctxray.inference.predict import predict

    shape, spacing = INPUTS[preset]
    t0 = time.perf_counter()
    model_dir = make_model_dir(root, preset)
    scan = root / f"dicom_{preset}"
    write_ct_series(scan, phantom(shape), spacing)
    setup = time.perf_counter() - t0
    model = ctxray.load(model_dir)
    predict(model, [scan], root / f"warm_{preset}", explain="none")  # warm-up: prompts, page cache
    stages = stage_times(model, scan)
    t0 = time.perf_counter()
    results = predict(model, [scan] * n, root / f"out_{preset}", explain="none")
    per_scan = (time.perf_counter() - t0) / n
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    # exactly 3 positive findings per scan, so 3 relevance maps (Grad-CAM, invert, NIfTI) and 3 overlays
    model.thresholds = {name: (0.0 if i < 3 else 1.01) for i, name in enumerate(model.labels)}
    t0 = time.perf_counter()
    results = predict(model, [scan] * n, root / f"out3_{preset}", explain="positive", explain_unvalidated=True)
    per_scan_3 = (time.perf_counter() - t0) / n
    assert all(r.status == "ok" and sum(f["decision"] for f in r.findings) == 3 for r in results)
    return {"preset": preset, "input_shape": shape, "input_spacing": spacing,
            "model_input": list(model.spec.shape_zyx), "n": n, "setup_s": round(setup, 1),
            "stages_s": {k: round(v, 3) for k, v in stages.items()},
            "seconds_per_scan_no_maps": round(per_scan, 3), "scans_per_min_no_maps": round(60 / per_scan, 2),
            "seconds_per_scan_3_maps": round(per_scan_3, 3), "scans_per_min_3_maps": round(60 / per_scan_3, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["demo", "merlin"], choices=sorted(INPUTS))
    parser.add_argument("--n", type=int, default=3, help="timed scans per preset")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    print(describe_machine() + " (other processes may share these CPUs: figures scale with the load)")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            res = bench(preset, args.n, Path(tmp))
            print(json.dumps(res, indent=1))
            print(f"{preset} (load average {os.getloadavg()[0]:.1f}): input {res['input_shape']} DICOM -> model "
                  f"{res['model_input']}: "
                  f"{res['scans_per_min_no_maps']} scans/min without heatmaps, "
                  f"{res['scans_per_min_3_maps']} scans/min with 3 heatmaps per scan", flush=True)


if __name__ == "__main__":
    main()
