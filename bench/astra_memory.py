"""Peak host memory of one ``i3resnet_152`` training step (forward + backward, batch 1, fp32, CPU) at
160x224x224, with or without per-block gradient checkpointing; one JSON line on stdout.

    python bench/astra_memory.py ckpt      # or: nockpt (run each in its own process: peak RSS is per process)
"""
import json
import resource
import sys
import time

import torch

from ctxray.models.registry import create_volume_encoder
from ctxray.utils.machine import describe_machine


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in ("ckpt", "nockpt"):
        sys.exit("usage: astra_memory.py ckpt|nockpt")
    torch.set_num_threads(1)
    ckpt = sys.argv[1] == "ckpt"
    enc = create_volume_encoder("i3resnet_152", input_shape=(160, 224, 224), grad_checkpointing=ckpt)
    x = torch.randn(1, 1, 160, 224, 224)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB on Linux
    t0 = time.time()
    out = enc(x)
    t1 = time.time()
    out.float().pow(2).mean().backward()
    t2 = time.time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"machine": describe_machine(), "checkpointing": ckpt,
                      "params_M": sum(p.numel() for p in enc.parameters()) / 1e6,
                      "rss_after_build_GB": round(base, 2), "peak_rss_GB": round(peak, 2),
                      "step_peak_minus_build_GB": round(peak - base, 2), "forward_s": round(t1 - t0, 1),
                      "backward_s": round(t2 - t1, 1), "out_shape": list(out.shape)}))


if __name__ == "__main__":
    main()
