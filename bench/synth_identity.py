"""Byte identity of the synthetic world: SHA-256 of every file a subset of a world writes.

Usage:
    python bench/synth_identity.py record DIGESTS.json [--preset demo --xrays 300 --scans 20] [--world]
    python bench/synth_identity.py check DIGESTS.json  (same options as when recorded)

``record`` renders the first ``--scans`` CT scans of the train split (all their reconstructions) and the
first ``--xrays`` radiographs by calling the chunk writers directly, and stores the SHA-256 of every file
written plus of the rows they return; ``--world`` writes the whole world of the preset instead. ``check``
renders the same again with the current code and lists every difference. Run ``record`` on the code
before a change and ``check`` after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def render_subset(out: Path, preset: str, n_scans: int, n_xrays: int, seed: int = 0) -> dict[str, str]:
    """Write the subset under ``out``; return file digests plus a digest of the returned rows."""
    from ctxray.synth.presets import get_preset
    from ctxray.synth.scans import plan_scans, write_scan
    from ctxray.synth.world import XRAY_CHUNK
    from ctxray.synth.xray_gallery import write_xray_chunk

    p = get_preset(preset)
    rows: list[object] = []
    for task in plan_scans(p, seed, "train", out / "ct")[:n_scans]:
        rows.append(write_scan(task))
    for start in range(0, n_xrays, XRAY_CHUNK):
        rows.append(write_xray_chunk((out / "xray", p, seed, start, min(start + XRAY_CHUNK, n_xrays))))
    found = _digests(out)
    found["<rows>"] = hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()
    return found


def render(out: Path, args: argparse.Namespace) -> dict[str, str]:
    if args.world:
        from ctxray.synth.world import generate_world

        generate_world(out, preset=args.preset, seed=0, workers=1)
        found = _digests(out)
        found.pop("world.json", None)  # records the software version; compared field by field below
        info = json.loads((out / "world.json").read_text())
        info.pop("software", None)
        found["<world.json>"] = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()
        return found
    return render_subset(out, args.preset, args.scans, args.xrays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["record", "check"])
    parser.add_argument("digests", type=Path)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--xrays", type=int, default=300)
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--world", action="store_true", help="the whole world instead of a subset")
    args = parser.parse_args(argv)
    from ctxray.utils.machine import describe_machine
    print(describe_machine(), flush=True)
    import os

    os.environ.setdefault("CTXRAY_NO_PROGRESS", "1")
    t0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        found = render(Path(tmp), args)
    cpu = time.process_time() - t0
    if args.mode == "record":
        args.digests.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(found)} digests in {args.digests} ({cpu:.1f} CPU-s)")
        return 0
    want = json.loads(args.digests.read_text())
    bad = sorted(k for k in want.keys() | found.keys() if want.get(k) != found.get(k))
    for k in bad[:20]:
        print(f"DIFFERS: {k}")
    print(f"{len(want) - len(bad)} of {len(want)} files identical, {len(bad)} differ ({cpu:.1f} CPU-s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
