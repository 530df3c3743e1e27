"""``ctxray shard``: a volume cache -> WebDataset-layout tar shards with per-shard SHA-256 (``shards.json``).

Exit status: 0 when written (or, with ``--verify``, when every shard matches its index), 1 when a shard does not
match, 2 when the cache cannot be read.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", nargs="?", help="a cache folder (ctxray preprocess --out)")
    parser.add_argument("--out", help="shard folder to create (shard-NNNNNN.tar, shards.json, spec.json)")
    parser.add_argument("--split", default=None, help="only this split (default: all, each volume's split recorded)")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MB (default 256)")
    parser.add_argument("--compress", choices=["none", "gzip"], default="none",
                        help="gzip each volume member (smaller, slower to read; default none)")
    parser.add_argument("--level", type=int, default=3, help="gzip level 1-9 (default 3)")
    parser.add_argument("--verify", metavar="DIR", default=None,
                        help="check a shard folder's sizes and SHA-256 against its shards.json and exit")


def run(args: argparse.Namespace) -> int:
    from ctxray.data.shards import verify_shards, write_shards

    if args.verify:
        try:
            problems = verify_shards(args.verify)
        except (OSError, ValueError) as err:
            log.error("ctxray shard --verify: %s", err)
            return 2
        for p in problems:
            log.error("%s", p)
        log.info("%s: %s", args.verify, "every shard matches shards.json" if not problems else
                 f"{len(problems)} shard(s) do not match")
        return 1 if problems else 0
    if not args.cache or not args.out:
        log.error("ctxray shard: give a CACHE folder and --out (or --verify DIR)")
        return 2
    try:
        index = write_shards(args.cache, args.out, split=args.split, shard_bytes=int(args.shard_mb * 1e6),
                             compress=args.compress, level=args.level)
    except (OSError, ValueError) as err:
        log.error("ctxray shard: %s", err)
        return 2
    total = sum(s["bytes"] for s in index["shards"])
    log.info("%s: %d volumes, %d shards, %.1f MB (%.0f kB per volume)", args.out, index["count"],
             len(index["shards"]), total / 1e6, total / max(1, index["count"]) / 1e3)
    return 0
