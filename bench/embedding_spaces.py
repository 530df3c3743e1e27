"""How spread out a run's shared space is, on a cache split: the effective rank of the report and of the volume
embeddings, their mean pairwise cosine, and where each volume's own report ranks among the split's reports.

    python bench/embedding_spaces.py RUN [RUN ...] [--split valid]

Effective rank = exp(entropy of the normalised squared singular values of the centred embeddings): 1 for points
on a line, the width for an isotropic cloud. Each run is read from its last checkpoint and the cache it trained
on (``data.cache`` of its config). One torch thread.
"""

from __future__ import annotations

import argparse

import torch


def effective_rank(x: torch.Tensor) -> float:
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s**2 / (s**2).sum()
    return float(torch.exp(-(p * torch.log(p + 1e-12)).sum()))


def describe(run: str, split: str) -> dict[str, float]:
    from ctxray.data.cachedir import read_cache
    from ctxray.data.dataset import CTCacheDataset
    from ctxray.models.zeroshot import encode_texts
    from ctxray.train.checkpoint import load_model

    model, tok, cfg = load_model(run, prefer="last")
    model.eval()
    ds = CTCacheDataset(read_cache(cfg.data.cache), split=split)
    text = encode_texts(model, tok, [str(e["report"]) for e in ds.entries], max_length=cfg.model.text.max_length)
    with torch.no_grad():
        vol = torch.cat([model.encode_volume(torch.stack([torch.as_tensor(ds[i]["volume"]).float()
                                                          for i in range(k, min(k + 8, len(ds)))]))
                         for k in range(0, len(ds), 8)])
    n = len(text)
    off = ~torch.eye(n, dtype=torch.bool)
    sim = vol @ text.T
    own_rank = (sim > sim.diag()[:, None]).sum(1).float() + 1
    return {"n": n, "text_effective_rank": effective_rank(text), "volume_effective_rank": effective_rank(vol),
            "text_mean_cosine": float((text @ text.T)[off].mean()),
            "own_report_median_rank": float(own_rank.median())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (ctxray train --out)")
    ap.add_argument("--split", default="valid")
    args = ap.parse_args()
    from ctxray.utils.machine import describe_machine

    torch.set_num_threads(1)
    print(describe_machine(), flush=True)
    print("| run | n | report eff. rank | volume eff. rank | report mean cosine | own report's median rank |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in args.runs:
        d = describe(run, args.split)
        print(f"| {run} | {d['n']} | {d['text_effective_rank']:.1f} | {d['volume_effective_rank']:.1f} | "
              f"{d['text_mean_cosine']:.2f} | {d['own_report_median_rank']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
