"""``ctxray retrieve``: CT report -> X-ray retrieval through the expert's text tower; cache teacher targets.

Example::

    ctxray retrieve --teacher T --ct C --gallery W/xray --out R --k 5 --index exact
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="teacher folder or spec (builtin, hf-clip:PATH, ...)")
    parser.add_argument("--ct", required=True, type=Path, help="CT-RATE root or preprocess cache (manifest.jsonl)")
    parser.add_argument("--gallery", required=True, type=Path, help="X-ray gallery folder (reports.csv)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (pairs.csv, targets.*)")
    parser.add_argument("--k", type=int, default=5, help="neighbours kept per CT (topk_mean averages them)")
    parser.add_argument("--index", choices=["exact", "faiss"], default="exact",
                        help="exact (blocked matmul) or FAISS search")
    parser.add_argument("--faiss-kind", choices=["ivf", "hnsw"], default="ivf", help="FAISS index type")
    parser.add_argument("--pairing", choices=["text", "random", "label_oracle"], default="text",
                        help="text: the method; random: control; label_oracle: pair by label vectors")
    parser.add_argument("--text-teacher", help="separate text-only expert for ranking (e.g. a CXR-BERT folder)")
    parser.add_argument("--gallery-split", help="use only this gallery split (default: all rows)")
    parser.add_argument("--cache-dir", type=Path, help="gallery embedding cache (default OUT/cache)")
    parser.add_argument("--no-center", dest="center", action="store_false",
                        help="match on raw cosine instead of mean-centred embeddings")
    parser.add_argument("--query", choices=["xray", "report"], default="xray",
                        help="xray: match the report's sentences stating X-ray-visible findings; report: all of it")
    parser.add_argument("--rerank", choices=["labels", "none"], default="labels",
                        help="labels: re-rank the best text matches by X-ray-visible label agreement")
    parser.add_argument("--candidates", type=int, default=256, help="text matches re-ranked per CT")
    parser.add_argument("--seed", type=int, default=0, help="seed of random pairing and tie-breaks")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")


def run(args: argparse.Namespace) -> int:
    import torch

    from ctxray.retrieval import RetrievalConfig, retrieve

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.k < 1:
        raise SystemExit("--k must be at least 1")
    cfg = RetrievalConfig(**{f.name: getattr(args, f.name) for f in fields(RetrievalConfig)})
    quality = retrieve(cfg)
    print(json.dumps(quality, indent=2))
    return 0
