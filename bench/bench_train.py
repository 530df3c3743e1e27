"""Training throughput and peak memory of volume encoders (default ``vit3d_small``) on this machine.

One training step = forward + backward + AdamW step of the volume encoder alone, on random input. Every
configuration runs in a fresh subprocess so that its peak memory (Linux's ``VmHWM``, else ``ru_maxrss``: the
process's peak resident set, which includes the ~0.3 GB of Python + torch itself) is its own. ``base`` is the
resident set of the runtime every row pays alike, measured before the encoder is built: Python, torch, the
encoder's module imported, and a throwaway AdamW (building the first AdamW of a process costs ~70 MB of its
own on torch 2.13). Where a reference row has a base too (one measured in the same run), ``step`` compares
the memory above it (peak - base): the training step's own memory, which the runtime hides at small shapes.
Each configuration does ``--warmup`` untimed steps, then ``--steps`` timed ones; the median wall time and the
median process CPU time per step are printed. CPU time is shown because the machine may be shared: under
load, wall time grows but CPU time much less (with N threads and no contention, wall ~= CPU / N). The machine
(CPU model, cores, torch threads, GPU) is printed first; figures mean nothing without it.

Shapes are (D, H, W). The ViT needs each axis divisible by its patch, and attention cost grows with the
square of the token count, so large volumes take larger patches (printed per row, with the token count).
Several ``--encoders`` run side by side at the same patches, hence the same token counts.

No figure from another machine is built in. Ratios are printed only against a reference the user supplies,
``--reference ref.json``, and that reference's machine is printed beside them; when it differs from this
machine the ratios compare two machines, and a note says so. Schema (``--save`` writes the same format from
this run, so a run here can be the reference of a later run here; the ``#`` notes are not part of the file)::

    {
      "schema": "ctxray-bench-train-reference/1",
      "encoder": "what was measured (free text)",
      "source": "who measured it, when, how (free text)",
      "method": "fwd+bwd+AdamW, batch 1, fp32 (free text)",
      "machine": {"cpu_model": "AMD EPYC", "cores": 2, "torch_threads": 2, "gpu": null},   # all required
      "rows": [                                                                             # one per shape
        {"shape": [100, 200, 200], "batch": 1, "tokens": 1000,        # batch (default 1), tokens optional
         "s_per_step": [1.57, 2.06],                                  # seconds, a number or [min, max]
         "peak_gb": 1.31}                                             # peak memory, GB
      ]
    }

A reference can also be measured in the same run: ``--external module:function`` imports ``module`` (from
``PYTHONPATH``) and calls ``function((D, H, W))``, which must return an ``nn.Module`` mapping ``(B, 1, D, H, W)`` to
any tensor (an ``n_tokens`` attribute, if it has one, is printed). Per shape it runs first, as its own row, in its
own subprocess with the same steps, threads and loss, and every other row's ratios are taken against it (wall
against wall, CPU against CPU); no code of the reference ships with ctxray, the user points at their own copy.

``bench/reference_ctvit_amd_epyc.json`` holds CT-CLIP's CTViT image encoder as measured by an outside review
on a 2-core AMD EPYC (2 threads, fp32, batch 1), not by this project. Goal there: at least 3x its throughput
with at most 1/3 of its memory.

    python bench/bench_train.py [--threads 1] [--steps 2] [--warmup 1] [--shapes demo 100x200x200]
        [--encoders vit3d_small vit3d_axial_small] [--levers fp32 ckpt bf16] [--patches main coarse ctvit]
        [--reference bench/reference_ctvit_amd_epyc.json | --external my_ctvit:build] [--save this_run.json]
    python bench/bench_train.py --device cuda      # on a GPU: peak = torch.cuda.max_memory_allocated

bf16 autocast on a CPU without native bf16 (no AVX512-BF16 / AMX / ARM BF16; the machine line says
"CPU bf16 emulated") is emulated and can be many times slower than fp32; leave ``bf16`` out of ``--levers``
there unless that is what you measure. On a GPU wall times are taken after ``torch.cuda.synchronize()``.
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
from pathlib import Path

from ctxray.utils.machine import describe_machine, machine_info

SCHEMA = "ctxray-bench-train-reference/1"
GOAL_SPEEDUP, GOAL_MEMORY = 3.0, 1.0 / 3.0
SHAPES = {
    "demo": (48, 96, 96),
    "160x224x224": (160, 224, 224),
    "100x200x200": (100, 200, 200),
    "240x480x480": (240, 480, 480),
}
MAIN_PATCH = {"demo": (16, 16, 16), "160x224x224": (16, 16, 16), "100x200x200": (10, 20, 20),
              "240x480x480": (16, 32, 32)}  # fmt: skip
COARSE_PATCH = {"100x200x200": (20, 20, 20), "240x480x480": (20, 40, 40)}
# CT-CLIP's CTViT tokenisation (10 slices x 20 x 20 pixels): 1,000 tokens at 100x200x200 (= MAIN_PATCH), 13,824 at 240^3
CTVIT_PATCH = {"240x480x480": (10, 20, 20)}
LEVERS = ("fp32", "ckpt", "bf16")


@dataclass
class Config:
    """One measured configuration."""

    shape: tuple[int, int, int]
    patch: tuple[int, int, int] | None
    batch: int = 1
    ckpt: bool = False
    bf16: bool = False
    encoder: str = "vit3d_small"
    external: str | None = None  # "module:function" building a reference encoder (encoder is then its label)

    @property
    def levers(self) -> str:
        return "+".join(n for n, on in (("ckpt", self.ckpt), ("bf16", self.bf16)) if on) or "fp32"


def default_configs(shapes: list[str], demo_batch: int, encoders: list[str], levers: tuple[str, ...] = LEVERS,
                    patches: tuple[str, ...] = ("main", "coarse")) -> list[Config]:  # fmt: skip
    """The benchmark grid. Per shape and encoder (encoders adjacent, so they read side by side): the main patch
    with each lever, then the coarser patch and CTViT's own patch (where it differs from the main one) in fp32.
    The levers run at the demo batch on the demo shape."""
    out: list[Config] = []
    for name in shapes:
        shape = SHAPES[name]
        for encoder in encoders:
            vit = encoder.startswith("vit3d")
            batches = [1, demo_batch] if name == "demo" else [1]
            if "main" in patches or not vit:
                patch = MAIN_PATCH[name] if vit else None
                if "fp32" in levers:
                    out += [Config(shape, patch, b, encoder=encoder) for b in batches]
                if "ckpt" in levers:
                    out.append(Config(shape, patch, batches[-1], ckpt=True, encoder=encoder))
                if "bf16" in levers:
                    out.append(Config(shape, patch, batches[-1], bf16=True, encoder=encoder))
            if vit and "coarse" in patches and name in COARSE_PATCH:
                out.append(Config(shape, COARSE_PATCH[name], 1, encoder=encoder))
            if vit and "ctvit" in patches and name in CTVIT_PATCH:
                out.append(Config(shape, CTVIT_PATCH[name], 1, encoder=encoder))
    return out


def with_external(configs: list[Config], spec: str, label: str) -> list[Config]:
    """``configs`` with a batch-1 row of the external reference encoder before each shape's first row."""
    out: list[Config] = []
    for cfg in configs:
        if not any(c.shape == cfg.shape for c in out):
            out.append(Config(cfg.shape, None, 1, encoder=label, external=spec))
        out.append(cfg)
    return out


def load_reference(path: str | Path) -> dict:
    """Read and check a reference JSON (schema in the module docstring).

    Returns:
        the parsed file, with ``rows`` keyed by ``(shape, batch)`` under ``by_key`` (the first row of each key)
        and every ``s_per_step`` as a ``(min, max)`` pair.

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        ref = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON file ({err})") from err
    machine = ref.get("machine") if isinstance(ref, dict) else None
    need = ("cpu_model", "cores", "torch_threads", "gpu")
    if not isinstance(machine, dict) or any(k not in machine for k in need):
        raise ValueError(f"{path}: a reference must record its machine: 'machine' with keys {', '.join(need)}")
    if not isinstance(ref.get("rows"), list) or not ref["rows"]:
        raise ValueError(f"{path}: 'rows' must be a non-empty list")
    ref["by_key"] = {}
    for i, row in enumerate(ref["rows"]):
        try:
            shape = tuple(int(v) for v in row["shape"])
            s = row["s_per_step"]
            lo, hi = (float(s), float(s)) if isinstance(s, (int, float)) else (float(s[0]), float(s[-1]))
            peak = float(row["peak_gb"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise ValueError(f"{path}: rows[{i}] needs shape [D, H, W], s_per_step and peak_gb ({err!r})") from err
        if len(shape) != 3 or lo <= 0 or hi < lo or peak <= 0:
            raise ValueError(f"{path}: rows[{i}]: shape must be 3 sizes, s_per_step > 0 (min <= max), peak_gb > 0")
        key = (shape, int(row.get("batch", 1)))  # the first row of a (shape, batch) is the one compared against
        ref["by_key"].setdefault(key, {**row, "s_per_step": (lo, hi), "peak_gb": peak})
    return ref


def describe_reference(ref: dict, here: dict) -> list[str]:
    """Lines naming the reference and its machine, and a note when that machine is not this one."""
    m = ref["machine"]
    lines = [f"reference: {ref.get('encoder', '?')} ({ref.get('source', 'source not given')}); "
             f"method: {ref.get('method', 'not given')}",
             f"reference machine: {m['cpu_model']}, {m['cores']} cores, {m['torch_threads']} thread(s), "
             f"GPU: {m['gpu'] or 'none'}"]  # fmt: skip
    same = (m["cpu_model"], m["cores"], m["torch_threads"], m["gpu"]) == (
        here["cpu_model"], here["cores"], here["torch_threads"], here["gpu"])  # fmt: skip
    if not same:
        lines.append("NOTE: the reference machine (or thread count) differs from this run's: the ratios compare "
                     "two machines, not two encoders; measure both here for an encoder comparison")  # fmt: skip
    return lines


def build_external(spec: str, shape: tuple[int, int, int]):
    """The reference encoder of ``--external module:function`` for ``shape`` (D, H, W).

    Raises:
        ValueError: if ``spec`` is not ``module:function`` or the function does not return an ``nn.Module``.
    """
    import importlib

    import torch

    module_name, sep, function = spec.partition(":")
    if not sep or not module_name or not function:
        raise ValueError(f"--external {spec!r}: expected module:function (e.g. my_ctvit:build)")
    build = getattr(importlib.import_module(module_name), function)
    enc = build(tuple(shape))
    if not isinstance(enc, torch.nn.Module):
        raise ValueError(f"--external {spec}: {function}({tuple(shape)}) returned {type(enc).__name__}, not an "
                         f"nn.Module")
    return enc


def in_run_reference(cfg: Config, res: dict, threads: int, here: dict) -> dict:
    """A reference (the :func:`load_reference` format) holding one row measured in this run: later rows of the
    shape and batch are compared with it, wall time with wall time and CPU time with CPU time."""
    row = {"shape": list(cfg.shape), "batch": cfg.batch, "tokens": res.get("tokens") or "?",
           "s_per_step": (res["wall"], res["wall"]), "cpu_per_thread": (res["cpu"] / threads,) * 2,
           "peak_gb": res["peak_gb"], "base_gb": res.get("base_gb")}
    return {"encoder": cfg.encoder, "source": "measured in this run", "method": "the same steps and loss",
            "machine": here, "rows": [row], "by_key": {(tuple(cfg.shape), cfg.batch): row}}


def parse_encoder_spec(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value,key=value`` (values as JSON, else strings) -> (encoder name, kwargs), so that
    variants of one encoder run side by side, e.g. ``vit3d_axial_slim_conv:stem_width=8``. The name may itself be
    an encoder of your own, ``module:function`` (options then follow a second colon): options are what follows
    the last colon when it holds a ``=``.

    Raises:
        ValueError: if an option is not ``key=value``.
    """
    name, _, opts = spec.rpartition(":")
    if not name or "=" not in opts:
        return spec, {}
    kwargs: dict = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"encoder {spec!r}: options must be key=value, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return name, kwargs


def _rss_gb() -> float:
    """Peak resident set of this process so far, GB: Linux's VmHWM, which starts afresh at exec, where
    ``ru_maxrss`` keeps the parent's peak at the fork (a worker started from a 1.4 GB process would read 1.4 GB
    before doing anything); ``ru_maxrss`` where there is no ``/proc``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def worker(cfg: Config, steps: int, warmup: int, threads: int, device: str = "cpu") -> dict:
    """Run the steps in this process; return timings and memory (called in the subprocess)."""
    import torch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    gpu = dev.type == "cuda"
    from ctxray.models.registry import create_volume_encoder

    if cfg.external:
        import importlib

        importlib.import_module(cfg.external.partition(":")[0])
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # the runtime's one-off cost, paid by every row
    base = 0.0 if gpu else _rss_gb()

    if cfg.external:
        enc = build_external(cfg.external, cfg.shape).to(dev)
    else:
        name, kw = parse_encoder_spec(cfg.encoder)
        kw = kw if cfg.patch is None else {**kw, "patch_size": cfg.patch}
        enc = create_volume_encoder(name, input_shape=cfg.shape, grad_checkpointing=cfg.ckpt, **kw).to(dev)
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
    tokens = getattr(enc, "n_tokens", None)
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


def _ratio(lo: float, hi: float) -> str:
    return f"{lo:.2f}x" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f}x"


def format_row(cfg: Config, res: dict, threads: int, ref: dict | None = None) -> str:
    """One table row; where the reference has the shape and batch: its figures, our memory fraction, then the
    speed-up and goal check by wall time and by CPU time / threads (the wall time an unloaded machine would give
    with perfect scaling). A reference given as a range gives a range of ratios; the goal needs all of it."""
    shape = "x".join(map(str, cfg.shape))
    patch = "x".join(map(str, cfg.patch)) if cfg.patch else "-"
    head = f"{cfg.encoder:>18} {shape:>12} {patch:>9} {res.get('tokens') or '-':>6} {cfg.batch:>3} {cfg.levers:>9}"
    if "error" in res:
        return f"{head}  FAILED: {res['error']}"
    vps = cfg.batch / res["wall"]
    row = f"{head} {res['wall']:8.2f} {vps:7.2f} {res['cpu']:8.2f} {res['peak_gb']:7.2f} {res['base_gb']:5.2f}"
    r = (ref or {}).get("by_key", {}).get((tuple(cfg.shape), cfg.batch))
    if r is None:
        return row
    lo, hi = r["s_per_step"]
    mem = res["peak_gb"] / r["peak_gb"]
    ref_s = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
    step = "-"
    if r.get("base_gb") is not None and res.get("base_gb") is not None:
        step = f"{(res['peak_gb'] - res['base_gb']) / max(r['peak_gb'] - r['base_gb'], 1e-9):.2f}"
    cells = [f"{ref_s:>9} s {r['peak_gb']:5.2f} GB {r.get('tokens', '?'):>6}  {mem:5.2f} {step:>5}"]
    for seconds, (r_lo, r_hi) in ((res["wall"], (lo, hi)), (res["cpu"] / threads, r.get("cpu_per_thread", (lo, hi)))):
        ok = "yes" if r_lo / seconds >= GOAL_SPEEDUP and mem <= GOAL_MEMORY else "no"
        cells.append(f"{_ratio(r_lo / seconds, r_hi / seconds):>12} {ok:>3}")
    return row + "   " + "  ".join(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--demo-batch", type=int, default=8, help="the demo's batch size (TrainConfig default)")
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--encoders", "--encoder", nargs="+", default=["vit3d_small"],
                   help="run side by side; NAME or NAME:key=value,... (e.g. vit3d_axial_slim_conv:stem_width=8)")
    p.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    p.add_argument("--patches", nargs="+", default=["main", "coarse"], choices=["main", "coarse", "ctvit"],
                   help="ctvit: CTViT's 10x20x20 patch at 240x480x480 (13,824 tokens; slow with full attention)")
    p.add_argument("--reference", help="reference JSON with its machine (schema above); ratios only against it")
    p.add_argument("--external", help="module:function building a reference encoder measured in this run, first "
                   "per shape; the other rows' ratios are against it (module from PYTHONPATH)")
    p.add_argument("--external-name", default=None, help="label of the --external row (default: the module name)")
    p.add_argument("--save", help="write this run's rows and machine as a reference JSON")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        cfg = Config(**json.loads(args.worker))
        cfg.shape = tuple(cfg.shape)
        cfg.patch = tuple(cfg.patch) if cfg.patch else None
        print(json.dumps(worker(cfg, args.steps, args.warmup, args.threads, args.device)))
        return 0
    import torch

    torch.set_num_threads(args.threads)  # so that the machine line shows the workers' thread count
    here = machine_info()
    ref = None
    if args.reference and args.external:
        print("error: give --reference (a JSON) or --external (measured here), not both", file=sys.stderr)
        return 2
    if args.reference:
        try:
            ref = load_reference(args.reference)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    print(describe_machine(here))
    where = "peak = max allocated GPU memory" if args.device != "cpu" else "peak = process max RSS"
    print(f"{', '.join(args.encoders)} on {args.device} ({where}), {args.threads} threads, {args.warmup} warm-up + "
          f"{args.steps} timed steps each")  # fmt: skip
    if "bf16" in args.levers and args.device == "cpu" and not here["cpu_native_bf16"]:
        print("NOTE: this CPU has no native bf16: the bf16 rows measure emulated bf16 (can be many times slower)")
    if args.external:
        print(f"reference: {args.external} measured in this run, first per shape (same machine, steps and threads)")
    for line in describe_reference(ref, here) if ref else [] if args.external else ["no --reference: no ratios"]:
        print(line)
    cols = ("   reference s, GB, tokens    mem  step   speed(wall) goal   speed(cpu) goal"
            if ref or args.external else "")  # fmt: skip
    print(f"{'encoder':>18} {'shape DxHxW':>12} {'patch':>9} {'tokens':>6} {'B':>3} {'levers':>9} {'s/step':>8} "
          f"{'vol/s':>7} {'cpu s':>8} {'peak GB':>7} {'base':>5}{cols}")  # fmt: skip
    rows = []
    configs = default_configs(args.shapes, args.demo_batch, args.encoders, tuple(args.levers), tuple(args.patches))
    if args.external:
        configs = with_external(configs, args.external, args.external_name or args.external.partition(":")[0])
    for cfg in configs:
        res = run_config(cfg, args.steps, args.warmup, args.threads, args.device)
        if cfg.external:
            ref = in_run_reference(cfg, res, args.threads, here) if "error" not in res else None
        print(format_row(cfg, res, args.threads, None if cfg.external else ref), flush=True)
        if "error" not in res:
            rows.append({"encoder": cfg.encoder, "shape": list(cfg.shape), "patch": cfg.patch, "batch": cfg.batch,
                         "levers": cfg.levers, "tokens": res["tokens"], "s_per_step": round(res["wall"], 3),
                         "cpu_s_per_step": round(res["cpu"], 3), "peak_gb": round(res["peak_gb"], 3),
                         "base_gb": round(res["base_gb"], 3),
                         "params_m": round(res["params_m"], 2)})  # fmt: skip
    end = f"load average at end: {os.getloadavg()[0]:.2f}; bench took {time.perf_counter() - t0:.0f} s"
    if ref:
        end = (f"goal: >= {GOAL_SPEEDUP:.0f}x the reference's throughput, <= {GOAL_MEMORY:.2f} of its memory (mem: "
               f"process peaks, what the goal is checked on; step: peaks above each run's runtime base); " + end)
    print(end)
    if args.save:
        names = ([args.external_name or args.external.partition(":")[0]] if args.external else []) + args.encoders
        out = {"schema": SCHEMA, "encoder": ", ".join(names),
               "source": f"bench/bench_train.py, {time.strftime('%Y-%m-%d %H:%M %Z')}",
               "method": f"fwd+bwd+AdamW on {args.device}, median of {args.steps} steps after {args.warmup}",
               "machine": here, "rows": rows}  # fmt: skip
        Path(args.save).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.save} ({len(rows)} rows; as a --reference, rows are matched by shape and batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
