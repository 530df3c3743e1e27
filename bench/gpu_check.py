"""GPU check of the training path: the tiny world's full-method run on CUDA (bf16 autocast), against the
same run on the CPU, and an interrupted-then-resumed CUDA run against an uninterrupted one.

Prints, for each run: seconds, optimiser steps per second, last-epoch validation zero-shot macro AUROC
and the final training loss; then the largest absolute weight difference between the resumed and the
uninterrupted CUDA runs (0 means the resume is bit-exact on this GPU; cuDNN/cuBLAS kernels may make it
small but not 0). Needs a CUDA device; writes under ``--out``.

    python bench/gpu_check.py --out /tmp/gpu_check [--epochs 10] [--cpu-threads 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def prepare(root: Path) -> tuple[Path, Path]:
    """Tiny world, ``small`` cache, tiny teacher, retrieval (as tests/train/test_train_world.py)."""
    from ctxray.data.cache import build_cache
    from ctxray.data.ingest import discover
    from ctxray.data.spec import get_preset
    from ctxray.retrieval import RetrievalConfig, retrieve
    from ctxray.synth.world import generate_world
    from ctxray.teacher.train import preset as teacher_preset
    from ctxray.teacher.train import train_teacher

    world, cache, teacher, ret = root / "world", root / "cache", root / "teacher", root / "retrieval"
    t0 = time.perf_counter()
    generate_world(world, preset="tiny", seed=0, workers=4)
    found = discover(world / "ct-rate")
    build_cache(found.items, cache, get_preset("small"), workers=4, prior_errors=found.errors)
    train_teacher(world / "xray", teacher, teacher_preset("tiny"))
    retrieve(RetrievalConfig(str(teacher), cache, world / "xray", ret, seed=0))
    print(f"prepared world, cache, teacher, retrieval in {time.perf_counter() - t0:.1f} s", flush=True)
    return cache, ret


def run(cache: Path, ret: Path, out: Path, device: str, epochs: int, stop_after: int | None = None,
        resume: bool = False) -> dict:
    from ctxray.config import load_config
    from ctxray.train.config import TrainConfig
    from ctxray.train.loop import train

    cfg = load_config(TrainConfig, CONFIG, [f"data.cache={cache}", f"data.retrieval={ret}", f"device={device}",
                                            "optim.precision=auto", f"optim.epochs={epochs}", "log_every=1000"])
    t0 = time.perf_counter()
    result = train(cfg, out, resume=resume, stop_after=stop_after)
    result["wall_s"] = time.perf_counter() - t0
    return result


def max_weight_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa = load_file(str(a / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last" / "model.safetensors"))
    if wa.keys() != wb.keys():
        return float("inf")
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--cpu-threads", type=int, default=8)
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device visible: nothing to check", file=sys.stderr)
        return 2
    torch.set_num_threads(args.cpu_threads)
    from ctxray.utils.machine import describe_machine

    print(describe_machine(), flush=True)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, bf16 supported: "
          f"{torch.cuda.is_bf16_supported()}", flush=True)
    root = Path(args.out)
    cache, ret = prepare(root)
    rows = {}
    for name, device in (("cuda", "cuda"), ("cpu", "cpu")):
        r = run(cache, ret, root / f"run_{name}", device, args.epochs)
        rows[name] = r
        print(f"{name}: {r['wall_s']:.1f} s, {r['step'] / r['wall_s']:.1f} steps/s, val AUROC {r['val_auroc']:.3f}, "
              f"train loss {r['train_loss']:.4f}", flush=True)
    half = rows["cuda"]["step"] // 2
    run(cache, ret, root / "run_cuda_resumed", "cuda", args.epochs, stop_after=half)
    resumed = run(cache, ret, root / "run_cuda_resumed", "cuda", args.epochs, resume=True)
    diff = max_weight_diff(root / "run_cuda", root / "run_cuda_resumed")
    print(f"cuda resume after {half} of {rows['cuda']['step']} steps: max |weight difference| vs uninterrupted "
          f"{diff:.3g}; val AUROC {resumed['val_auroc']:.3f}", flush=True)
    (root / "gpu_check.json").write_text(json.dumps({"runs": rows, "resume_max_diff": diff,
                                                     "resumed": resumed}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
