"""``ctxray preprocess``: CT-RATE / RAD-ChestCT / NIfTI + reports / DICOM -> a memory-mappable volume cache.

Exit status: 0 when the batch completed (bad inputs are listed in ``OUT/errors.log``), 1 with
``--strict`` when any input failed or a shard is missing, 2 when the input as a whole is unusable.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard expects K/N (e.g. 3/16), got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 1 <= K <= N")
    return k, n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", help="CT-RATE root, RAD-ChestCT folder, NIfTI folder or DICOM folder")
    parser.add_argument("--out", required=True, help="cache folder (spec.json, volumes/, manifest.jsonl, errors.log)")
    parser.add_argument("--preset", default="demo",
                        help="tiny, small, demo, ctclip, fvlm, merlin or astra (default: demo)")
    parser.add_argument("--spec", default=None, help="a spec.json file instead of --preset")
    parser.add_argument("--format", default="auto", choices=["auto", "ctrate", "radchest", "nifti", "dicom"],
                        help="input kind (default: detected)")
    parser.add_argument("--reports", default=None, help="CSV of reports (and labels) for a NIfTI folder")
    parser.add_argument("--splits", default=None, help="CT-RATE splits, comma-separated (default: train,valid)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default 1)")
    parser.add_argument("--shard", type=_shard, default=None,
                        help="K/N: do only shard K of N (e.g. a Slurm array task); then run --merge once")
    parser.add_argument("--merge", action="store_true", help="merge the shard manifests of --out and exit")
    parser.add_argument("--verify", default="checksum", choices=["checksum", "size"],
                        help="how cached volumes are checked before reuse (default checksum)")
    parser.add_argument("--allow-empty-reports", action="store_true",
                        help="keep volumes whose report is empty (default: logged and skipped when reports exist)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any input failed")


def run(args: argparse.Namespace) -> int:
    from ctxray.data.cache import build_cache, merge_shards
    from ctxray.data.ingest import discover
    from ctxray.data.spec import PreprocessSpec, get_preset

    try:
        if args.merge:
            manifest, problems = merge_shards(args.out, verify=args.verify)
            print(f"merged into {manifest}: {len(problems)} problem(s)")
            return 1 if args.strict and problems else 0
        if not args.input:
            raise ValueError("an input folder is required (or --merge)")
        spec = PreprocessSpec.load(args.spec) if args.spec else get_preset(args.preset)
        splits = args.splits.split(",") if args.splits else None
        found = discover(args.input, kind=args.format, reports_csv=args.reports, splits=splits,
                         require_report=False if args.allow_empty_reports else None)
        result = build_cache(found.items, args.out, spec, workers=args.workers, shard=args.shard,
                             verify=args.verify, prior_errors=found.errors)
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 2
    print(f"{result.manifest}: {result.written} written, {result.reused} reused, {len(result.errors)} error(s) "
          f"in {result.seconds:.1f} s")
    return 1 if args.strict and result.errors else 0
