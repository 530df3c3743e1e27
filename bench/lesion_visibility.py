"""How visible each finding is at a training grid: the signal a lesion leaves after acquisition and resampling.

For each label, patients of a synthetic-world preset that have it are rendered twice with identical noise
(with and without that label's lesions, ``render.acquire``), both volumes are resampled to a preprocessing
grid as the cache would (trilinear, ``ctxray.data.resample``) and windowed; printed per label:
the voxels the lesion changes by more than 2 noise SDs, the largest change in noise SDs, and the
matched-filter detectability d' = ||with - without|| / noise SD (the best any linear detector could do
knowing the lesion's exact form and place; a learned model needs far more). A label at d' < ~5 is near
invisible at that grid.

    .venv/bin/python bench/lesion_visibility.py [--world-preset demo] [--spec small] [--patients 12] [--labels NAME ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-preset", default="demo")
    parser.add_argument("--spec", default="small", help="preprocessing preset whose grid is measured")
    parser.add_argument("--patients", type=int, default=12, help="positive patients per label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", nargs="*", default=None, help="only these labels (default: all 18)")
    args = parser.parse_args()

    from ctxray.data.resample import resample_grid
    from ctxray.data.spec import get_preset as spec_preset
    from ctxray.labels import load_labels
    from ctxray.synth.canvas import Grid
    from ctxray.synth.presets import get_preset
    from ctxray.synth.render import acquire, paint_patient
    from ctxray.synth.scans import ScanTask, scan_lesions
    from ctxray.utils.machine import describe_machine

    t0 = time.perf_counter()
    preset, spec = get_preset(args.world_preset), spec_preset(args.spec)
    grid = Grid.centred(preset.ct_shape, preset.ct_spacing)
    names = args.labels or load_labels().names
    found: dict[str, list] = {n: [] for n in names}
    for pid in range(1, 2000):
        anatomy, labels, _age, lesions = scan_lesions(ScanTask(None, "train", pid, 0, 1, preset, seed=args.seed))
        for n, v in labels.items():
            if v and n in found and len(found[n]) < args.patients:
                found[n].append((pid, anatomy, lesions))
        if all(len(v) >= args.patients for v in found.values()):
            break
    out_spacing = np.asarray(spec.spacing_zyx, dtype=float)
    out_shape = tuple(spec.shape_zyx)
    in_origin = -np.asarray(grid.shape) * np.asarray(grid.spacing) / 2
    out_origin = -np.asarray(out_shape) * out_spacing / 2
    scale = 1.0 / (spec.hu_max - spec.hu_min)

    def to_spec(hu: np.ndarray) -> np.ndarray:
        out = resample_grid(hu.astype(np.float32), grid.spacing, in_origin, out_shape, out_spacing, out_origin,
                            fill=spec.hu_min)
        return np.clip((out - spec.hu_min) * scale, 0, 1)

    print(describe_machine())
    print(f"world preset {preset.name} {preset.ct_shape} at {preset.ct_spacing} mm -> spec {spec.name} "
          f"{out_shape} at {tuple(out_spacing)} mm; {args.patients} positive patients per label")
    print("| label | voxels > 2 SD (median) | max change, SD (median) | d' (median) | d' (10th pct) |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        vox, peak, dprime = [], [], []
        for pid, anatomy, lesions in found[name]:
            seed = 1000 + pid
            with_ = to_spec(acquire(paint_patient(anatomy, lesions, grid).hu, anatomy, grid, seed))
            without = to_spec(acquire(paint_patient(anatomy, lesions, grid, exclude=[name]).hu, anatomy, grid, seed))
            sd = anatomy.noise_hu * scale
            diff = (with_ - without) / sd
            vox.append(int((np.abs(diff) > 2).sum()))
            peak.append(float(np.abs(diff).max()))
            dprime.append(float(np.sqrt((diff ** 2).sum())))
        print(f"| {name} | {np.median(vox):.0f} | {np.median(peak):.1f} | {np.median(dprime):.0f} | "
              f"{np.percentile(dprime, 10):.0f} |")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
