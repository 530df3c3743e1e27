"""Is a classifier's evidence inside the lesion? The check to run before blaming a relevance map.

For each true positive of the chosen labels on the synthetic world, the model input's voxels inside the
lesion's sphere (ground-truth centre, radius = half its size + ``--pad`` mm) are replaced by the median of a
15 mm shell around the sphere (a crude in-painting: the lesion is replaced by its surroundings), and the drop
of the label's logit is recorded, beside the drops for the same sphere at ``--controls`` random points of the
body. A model whose score falls when the lesion is painted out, and not when other places are, has its
evidence there, so a map that misses is the method's fault; a model whose score does not move uses something
else (co-occurring findings, global statistics) or the ground truth's sphere is not where the lesion is.

    .venv/bin/python bench/lesion_evidence.py --classifier DIR --world W [--labels "Lung nodule" ...]
        [--max-volumes 80] [--spec small]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")

FOCAL = ["Lung nodule", "Consolidation", "Pleural effusion", "Pericardial effusion", "Hiatal hernia", "Atelectasis"]


def _drop(model, x: torch.Tensor, i: int, ref: float, centre_mm: np.ndarray, radius_mm: float,
          coords_mm: list[np.ndarray]) -> float:
    """Logit drop when the sphere (model-grid mm) is filled with its 15 mm shell's median."""
    d = np.sqrt(sum((g - c) ** 2 for g, c in zip(coords_mm, centre_mm)))
    inside, shell = d <= radius_mm, (d > radius_mm) & (d <= radius_mm + 15.0)
    if not inside.any() or not shell.any():
        return float("nan")
    xo = x.clone()
    xo[0, 0][torch.from_numpy(inside)] = float(np.median(x[0, 0].numpy()[shell]))
    with torch.no_grad():
        return ref - float(model.net(xo)[0, i])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifier", required=True, help="folder of bench/train_supervised.py")
    parser.add_argument("--world", required=True)
    parser.add_argument("--spec", default="small")
    parser.add_argument("--labels", nargs="+", default=FOCAL)
    parser.add_argument("--max-volumes", type=int, default=80)
    parser.add_argument("--pad", type=float, default=5.0, help="mm added to the lesion radius")
    parser.add_argument("--controls", type=int, default=5, help="random body spheres per lesion")
    args = parser.parse_args()
    from ctxray.utils.machine import describe_machine
    print(describe_machine(), flush=True)
    torch.set_num_threads(1)
    from ctxray.data.spec import get_preset
    from ctxray.inference.pointing import _stem, body_mask, lesion_radius_mm, read_ground_truth
    from ctxray.inference.supervised import load_classifier

    spec = get_preset(args.spec)
    model = load_classifier(args.classifier, spec)
    rows, paths = read_ground_truth(args.world)
    rng = np.random.default_rng(0)
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in args.labels}
    for row in rows[: args.max_volumes]:
        wanted = [k for k in args.labels if row["labels"].get(k) and any(les["label"] == k for les in row["lesions"])]
        if not wanted:
            continue
        vol = model.read(paths[_stem(row["VolumeName"])])
        x = model.preprocess(vol)
        decided = model.decisions(x)
        origin, s_out = (np.asarray(v, float) for v in spec.output_grid(tuple(vol.hu.shape), tuple(vol.spacing_zyx)))
        sp = np.asarray(vol.spacing_zyx, float)
        coords = np.meshgrid(*[np.arange(n) * s for n, s in zip(x.shape[2:], s_out)], indexing="ij")  # model mm
        body = np.argwhere(body_mask(vol.hu))
        for label in (k for k in wanted if decided[k]):
            i = model.labels.index(label)
            with torch.no_grad():
                ref = float(model.net(x)[0, i])
            for les in (les for les in row["lesions"] if les["label"] == label):
                r = lesion_radius_mm(les.get("size_mm")) + args.pad
                at = np.asarray(les["center_zyx_vox"]) * sp - origin  # model-grid mm
                ctrl = [_drop(model, x, i, ref, p * sp - origin, r, coords)
                        for p in body[rng.choice(len(body), args.controls)]]
                out[label].append((_drop(model, x, i, ref, at, r, coords), float(np.nanmax(ctrl))))
    print("| label | lesions | median logit drop, lesion painted out | median drop, same sphere elsewhere (max of "
          f"{args.controls}) | share where the lesion's drop is larger |\n|---|---:|---:|---:|---:|")
    for label, pairs in out.items():
        if pairs:
            a = np.asarray(pairs)
            print(f"| {label} | {len(a)} | {np.nanmedian(a[:, 0]):+.2f} | {np.nanmedian(a[:, 1]):+.2f} | "
                  f"{np.mean(a[:, 0] > a[:, 1]):.2f} |")


if __name__ == "__main__":
    main()
