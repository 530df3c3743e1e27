"""Where a generator's CIDEr comes from: per-report CIDEr-D split by normal / abnormal reference and report.

    PYTHONPATH=src python bench/cider_breakdown.py WORK/samples.json [KEY ...]

Reads ``bench_generate_planned.py``'s ``samples.json`` (validation references and each row's reports) and
adds the most common reference as a row (on the demo world it is the template's text). For each row: the mean
per-report CIDEr-D (pycocoevalcap's scorer, sigma 6, plain lower-case tokens) and the same without the length
penalty (sigma 1e6), by stratum: reference normal or not (labeler, hedged = positive) x report states
findings or not; each stratum's part of the mean, the mean length difference (report - reference, tokens),
wrong (FP) and missed (FN) findings per report.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def per_report_cider(generated: list[str], references: list[str], sigma: float) -> np.ndarray:
    """CIDEr-D of each report against its one reference (IDF over ``references``). Shape: -> (N,)."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    from ctxray.generate.metrics import _simple_tokenize

    scorer = CiderScorer(n=4, sigma=sigma)
    for g, r in zip(generated, references):
        scorer += (_simple_tokenize(g), [_simple_tokenize(r)])
    return np.asarray(scorer.compute_score()[1], dtype=np.float64)


def breakdown(generated: list[str], references: list[str]) -> list[dict]:
    """One row per non-empty stratum (see the module docstring)."""
    from ctxray.generate.metrics import _simple_tokenize
    from ctxray.labeler import label_matrix

    yr = label_matrix(references, "ct", uncertain_as=1.0) > 0
    yg = label_matrix(generated, "ct", uncertain_as=1.0) > 0
    c6, flat = per_report_cider(generated, references, 6.0), per_report_cider(generated, references, 1e6)
    delta = np.array([len(_simple_tokenize(g).split()) - len(_simple_tokenize(r).split())
                      for g, r in zip(generated, references)])
    fp, fn = (yg & ~yr).sum(1), (~yg & yr).sum(1)
    rn, gn = ~yr.any(1), ~yg.any(1)
    rows = [{"stratum": "all", "n": len(c6), "cider": c6.mean(), "share_of_mean": c6.mean(), "no_length_penalty":
             flat.mean(), "len_delta": delta.mean(), "fp": fp.mean(), "fn": fn.mean()}]
    strata = (("reference normal, report normal", rn & gn), ("reference normal, report with findings", rn & ~gn),
              ("reference abnormal, report normal", ~rn & gn), ("reference abnormal, report with findings", ~rn & ~gn))
    for name, m in strata:
        if m.any():
            rows.append({"stratum": name, "n": int(m.sum()), "cider": c6[m].mean(),
                         "share_of_mean": c6[m].sum() / len(c6), "no_length_penalty": flat[m].mean(),
                         "len_delta": delta[m].mean(), "fp": fp[m].mean(), "fn": fn[m].mean()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("samples")
    ap.add_argument("keys", nargs="*", help="rows of samples.json (default: every planned row, seed 0)")
    args = ap.parse_args()
    data = json.loads(open(args.samples).read())
    refs = data["references"]
    data["template (most common reference)"] = [max(set(refs), key=refs.count)] * len(refs)
    keys = args.keys or [k for k in data if k.startswith("planned-") and k.endswith("-s0")]
    print("| report set | stratum | reports | mean CIDEr-D | part of the mean | without length penalty | "
          "length - reference (tokens) | wrong findings / report | missed findings / report |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for key in keys + ["template (most common reference)"]:
        for r in breakdown(data[key], refs):
            print(f"| {key} | {r['stratum']} | {r['n']} | {r['cider']:.3f} | {r['share_of_mean']:.3f} | "
                  f"{r['no_length_penalty']:.3f} | {r['len_delta']:+.1f} | {r['fp']:.2f} | {r['fn']:.2f} |")


if __name__ == "__main__":
    main()
