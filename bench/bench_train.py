"""Training throughput and peak memory of the default volume encoder (``vit3d_small``) on this CPU.

One training step = forward + backward + AdamW step of the volume encoder alone (the cost CT-CLIP's CTViT
reference below measures), on random input. Every configuration runs in a fresh subprocess so that its peak
memory (``getrusage(RUSAGE_SELF).ru_maxrss``: the process's peak resident set, which includes the ~0.3 GB
of Python + torch itself, printed as ``base``) is its own. Each configuration does ``--warmup`` untimed steps,
then ``--steps`` timed ones; the median wall time and the median process CPU time per step are printed.
CPU time is shown because the machine is shared: under load, wall time grows but CPU time much less
(with N threads and no contention, wall ~= CPU / N).

Shapes are (D, H, W). The ViT needs each axis divisible by its patch, and attention cost grows with the
square of the token count, so large volumes take larger patches (printed per row, with the token count).

Reference (CT-CLIP's CTViT image encoder, measured on this machine: 2 threads, fp32, batch 1, per training
step): 28.1 s and 12.7 GB at 240x480x480; 1.16 s and 1.43 GB at 100x200x200.
Goal: at least 3x its throughput with at most 1/3 of its memory.

    .venv/bin/python bench/bench_train.py [--threads 2] [--steps 2] [--warmup 1] [--shapes demo 100x200x200]
    python bench/bench_train.py --device cuda      # on a GPU: peak = torch.cuda.max_memory_allocated

On a GPU the CTViT comparison columns are left out (the reference is a CPU figure); wall times are taken
after ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

# CTViT reference per training step at batch 1: (seconds, peak GB); keys are (D, H, W)
REFERENCE = {(240, 480, 480): (28.1, 12.7), (100, 200, 200): (1.16, 1.43)}
GOAL_SPEEDUP, GOAL_MEMORY = 3.0, 1.0 / 3.0
SHAPES = {
    "demo": (48, 96, 96),
    "160x224x224": (160, 224, 224),
    "100x200x200": (100, 200, 200),
    "240x480x480": (240, 480, 480),
}


@dataclass
class Config:
    """One measured configuration."""

    shape: tuple[int, int, int]
    patch: tuple[int, int, int] | None
    batch: int = 1
    ckpt: bool = False
    bf16: bool = False
    encoder: str = "vit3d_small"


def default_configs(shapes: list[str], demo_batch: int, encoder: str) -> list[Config]:
    """The benchmark grid: per shape, a main patch with and without the levers, plus a coarser patch."""
    main = {"demo": (16, 16, 16), "160x224x224": (16, 16, 16), "100x200x200": (10, 20, 20),
            "240x480x480": (16, 32, 32)}  # fmt: skip
    coarse = {"100x200x200": (20, 20, 20), "240x480x480": (20, 40, 40)}
    out: list[Config] = []
    for name in shapes:
        shape, patch = SHAPES[name], main[name] if encoder.startswith("vit3d") else None
        batches = [1, demo_batch] if name == "demo" else [1]
        lever_batch = batches[-1]
        out += [Config(shape, patch, b, encoder=encoder) for b in batches]
        out += [Config(shape, patch, lever_batch, ckpt=True, encoder=encoder)]
        out += [Config(shape, patch, lever_batch, bf16=True, encoder=encoder)]
        if name in coarse and encoder.startswith("vit3d"):
            out.append(Config(shape, coarse[name], 1, encoder=encoder))
    return out


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU visible"


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def worker(cfg: Config, steps: int, warmup: int, threads: int, device: str = "cpu") -> dict:
    """Run the steps in this process; return timings and memory (called in the subprocess)."""
    import torch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    base = 0.0 if gpu else _rss_gb()
    from ctxray.models.registry import create_volume_encoder

    kw = {} if cfg.patch is None else {"patch_size": cfg.patch}
    enc = create_volume_encoder(cfg.encoder, input_shape=cfg.shape, grad_checkpointing=cfg.ckpt, **kw).to(dev)
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-4)
    x = torch.rand(cfg.batch, 1, *cfg.shape, generator=torch.Generator().manual_seed(0)).to(dev)
    walls, cpus = [], []
    for i in range(warmup + steps):
        w0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            emb = enc(x)
        emb.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        if i >= warmup:
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    tokens = None
    if cfg.patch is not None:
        tokens = 1
        for s, p in zip(cfg.shape, cfg.patch):
            tokens *= s // p
    peak = torch.cuda.max_memory_allocated(dev) / 1024**3 if gpu else _rss_gb()
    return dict(wall=statistics.median(walls), cpu=statistics.median(cpus), peak_gb=peak, base_gb=base,
                tokens=tokens, params_m=sum(p.numel() for p in enc.parameters()) / 1e6)  # fmt: skip


def run_config(cfg: Config, steps: int, warmup: int, threads: int, device: str = "cpu") -> dict:
    """Run one configuration in a fresh interpreter and parse its JSON result."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(asdict(cfg)), "--steps", str(steps),
           "--warmup", str(warmup), "--threads", str(threads), "--device", device]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def format_row(cfg: Config, res: dict, threads: int, compare: bool = True) -> str:
    """One table row; where the shape has a reference: memory fraction, then speed-up and goal check by wall
    time and by CPU time / threads (the wall time an unloaded machine would give with perfect scaling)."""
    shape = "x".join(map(str, cfg.shape))
    patch = "x".join(map(str, cfg.patch)) if cfg.patch else "-"
    levers = "+".join(n for n, on in (("ckpt", cfg.ckpt), ("bf16", cfg.bf16)) if on) or "fp32"
    head = f"{shape:>12} {patch:>9} {res.get('tokens') or '-':>6} {cfg.batch:>3} {levers:>9}"
    if "error" in res:
        return f"{head}  FAILED: {res['error']}"
    vps = cfg.batch / res["wall"]
    row = f"{head} {res['wall']:8.2f} {vps:7.2f} {res['cpu']:8.2f} {res['peak_gb']:7.2f} {res['base_gb']:5.2f}"
    ref = REFERENCE.get(cfg.shape)
    if ref and cfg.batch == 1 and compare:
        mem = res["peak_gb"] / ref[1]
        cells = []
        for seconds in (res["wall"], res["cpu"] / threads):
            speed = ref[0] / seconds
            ok = "yes" if speed >= GOAL_SPEEDUP and mem <= GOAL_MEMORY else "no"
            cells.append(f"{speed:5.1f}x {ok:>3}")
        row += f"   {ref[0]:5.2f} s {ref[1]:5.2f} GB  {mem:5.2f}  " + "  ".join(cells)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--demo-batch", type=int, default=8, help="the demo's batch size (TrainConfig default)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--encoder", default="vit3d_small")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        cfg = Config(**json.loads(args.worker))
        cfg.shape = tuple(cfg.shape)
        cfg.patch = tuple(cfg.patch) if cfg.patch else None
        print(json.dumps(worker(cfg, args.steps, args.warmup, args.threads, args.device)))
        return 0
    t0 = time.perf_counter()
    where = args.device if args.device == "cpu" else f"{args.device} ({_gpu_name()}; peak = max allocated GPU memory)"
    print(f"{args.encoder} on {where}, {args.threads} threads, {args.warmup} warm-up + {args.steps} timed steps each; "
          f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'shape DxHxW':>12} {'patch':>9} {'tokens':>6} {'B':>3} {'levers':>9} {'s/step':>8} {'vol/s':>7} "
          f"{'cpu s':>8} {'peak GB':>7} {'base':>5}   CTViT ref        mem   speed goal  speed(cpu) goal")  # fmt: skip
    for cfg in default_configs(args.shapes, args.demo_batch, args.encoder):
        res = run_config(cfg, args.steps, args.warmup, args.threads, args.device)
        print(format_row(cfg, res, args.threads, compare=args.device == "cpu"), flush=True)
    print(f"goal: >= {GOAL_SPEEDUP:.0f}x CTViT's throughput and <= {GOAL_MEMORY:.2f} of its memory at batch 1; "
          f"load average at end: {os.getloadavg()[0]:.2f}; bench took {time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
