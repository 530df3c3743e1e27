"""Markdown tables from ``bench_generate_planned.py`` outputs: mean (sd) over seeds, per-label CE by group.

    python bench/summarise_generate_planned.py WORK_DIR[=TAG] ... [--per-label "planned-probe (full)"]

A ``TAG`` is appended to the names of that folder's planned and shuffled rows (e.g. the operating point).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

COLUMNS = [("ce_macro_f1", "CE macro F1"), ("ce_xray_f1", "CE X-ray-visible"), ("ce_ctonly_f1", "CE CT-only"),
           ("BLEU-4", "BLEU-4"), ("METEOR", "METEOR"), ("ROUGE-L", "ROUGE-L"), ("CIDEr", "CIDEr"),
           ("contradictions", "reports with a contradiction"), ("laterality_acc", "side exact (pairs)")]


def _cell(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{np.mean(vals):.3f} ({np.std(vals, ddof=1):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", nargs="+")
    ap.add_argument("--per-label", default=None, help="a generator name for the per-label CE table")
    args = ap.parse_args()
    groups: dict[str, list[dict]] = defaultdict(list)
    seen: set[tuple[str, object]] = set()
    for item in args.work:
        w, _, tag = item.partition("=")
        for row in json.loads((Path(w) / "rows.json").read_text()):
            if tag and row["generator"].startswith(("planned", "shuffled")):
                row["generator"] = f"{row['generator']} {tag}"
            key = (row["generator"], row["seed"])
            if key not in seen:  # template / oracle rows repeat across work folders
                seen.add(key)
                groups[row["generator"]].append(row)
    head = ["generator", "seeds", *(c for _, c in COLUMNS)]
    print("| " + " | ".join(head) + " |\n|---|---|" + "---:|" * len(COLUMNS))
    for name, rows in groups.items():
        seeds = ",".join(str(r["seed"]) for r in rows) if rows[0]["seed"] is not None else "-"
        cells = []
        for key, _ in COLUMNS:
            if key == "laterality_acc":
                cells.append(_cell([r[key] for r in rows]) + f" ({int(np.mean([r['laterality_n'] for r in rows]))})")
            elif key == "contradictions":
                cells.append(str(max(r[key] for r in rows)))
            else:
                cells.append(_cell([r.get(key) for r in rows]))
        print(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    if args.per_label:
        rows = groups[args.per_label]
        print(f"\nPer label, {args.per_label}, mean F1 over seeds {[r['seed'] for r in rows]} (support = validation "
              "reports with the finding):\n")
        print("| label | group | support | F1 | precision | recall |\n|---|---|---:|---:|---:|---:|")
        per = [r["ce_per_label"] for r in rows]
        order = sorted(range(len(per[0])), key=lambda j: (not per[0][j]["xray_visible"], per[0][j]["label"]))
        for j in order:
            lab = per[0][j]
            vals = {k: _cell([p[j][k] if p[j][k] is not None else float("nan") for p in per])
                    for k in ("f1", "precision", "recall")}
            group = "X-ray-visible" if lab["xray_visible"] else "CT-only"
            cells = [lab["label"], group, str(lab["support"]), vals["f1"], vals["precision"], vals["recall"]]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
