"""Print the report labeler's per-label precision/recall/F1 against IU MeSH labels (held-out half).

Usage: .venv/bin/python bench/bench_labeler_iu.py [--half heldout|dev|all] [--tgz NLMCXR_reports.tgz]

Reads the Indiana University reports from the installed torchxrayvision wheel (never copied into the
repository), maps their MeSH major terms to the X-ray labels with the rules file's ``iu_mesh_mapping``
and scores ``ctxray.labeler`` (label set "xray") on Findings + Impression. Two columns sets: hedged
("uncertain") mentions counted as positive (u=1) and as negative (u=0).
"""

from __future__ import annotations

import argparse
import math
import time

from ctxray.generate.iu_validation import validate_on_iu


def _f(x: float) -> str:
    return "  n/a" if math.isnan(x) else f"{x:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", default="heldout", choices=["heldout", "dev", "all"])
    parser.add_argument("--tgz", default=None, help="NLMCXR_reports.tgz (default: from the torchxrayvision wheel)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows1, n = validate_on_iu(args.half, uncertain_as=1.0, tgz=args.tgz)
    rows0, _ = validate_on_iu(args.half, uncertain_as=0.0, tgz=args.tgz)
    print(f"IU reports, {args.half} half: {n} reports (non-empty text and MeSH), {time.perf_counter() - t0:.1f} s")
    print()
    print("| label | MeSH positives | P (u=1) | R (u=1) | F1 (u=1) | P (u=0) | R (u=0) | F1 (u=0) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(rows1, rows0):
        name = f"**{a.label}**" if a.label in ("macro", "micro") else a.label
        print(f"| {name} | {a.support} | {_f(a.precision)} | {_f(a.recall)} | {_f(a.f1)} | "
              f"{_f(b.precision)} | {_f(b.recall)} | {_f(b.f1)} |")


if __name__ == "__main__":
    main()
