"""``ctxray predict``: run a model folder on scans (findings, report, embedding, heatmaps, HTML).

Exit status: 0 when the batch completed (failed scans are listed in ``OUT/summary.json`` and
``OUT/errors.log``), 1 with ``--strict`` when any scan failed, 2 when the model folder cannot be loaded.
"""

from __future__ import annotations

import argparse
import logging

import ctxray

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model folder (ctxray export --out MODEL_DIR)")
    parser.add_argument("--input", required=True, nargs="+",
                        help="NIfTI/.npz files, DICOM folders, or folders of scans")
    parser.add_argument("--out", required=True, help="output folder (one sub-folder per scan)")
    parser.add_argument("--explain", choices=("positive", "all", "none"), default="positive",
                        help="relevance maps for positive findings (default), every label, or none")
    parser.add_argument("--explain-method", type=_method, default="gradcam",
                        help="relevance-map method: gradcam, hirescam, occlusion, rollout or gradrollout, optionally "
                        "with an option: occlusion:blur (patch filled with a smoothed copy, the fill the pointing "
                        "benchmark validated), occlusion:DxHxW, gradcam:N / hirescam:N (feature stage); "
                        "ctxray.inference.heatmap; occlusion is slow; rollout and gradrollout: ViT encoders only")
    parser.add_argument("--explain-unvalidated", action="store_true",
                        help="also draw maps of labels whose localisation the model folder never validated "
                             "(by default only labels listed in its localisation.json get maps)")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML report")
    parser.add_argument("--max-voxels", type=int, default=4_000_000,
                        help="voxel budget of the volume embedded in the HTML report")
    parser.add_argument("--series-uid", default=None,
                        help="for a DICOM folder with several CT series: the SeriesInstanceUID or dcm- id to read "
                             "(the error for such a folder lists them; localizers are skipped by themselves)")
    parser.add_argument("--write-mapping", default=None, metavar="FILE",
                        help="write 'pseudonym<TAB>input path' lines to FILE (outputs are named by pseudonyms only)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any scan failed")


def run(args: argparse.Namespace) -> int:
    from ctxray.inference.predict import predict

    try:
        model = ctxray.load(args.model)
    except (OSError, ValueError) as err:  # a broken or untrusted model folder: one clear line, no traceback
        log.error("cannot load the model folder: %s", " ".join(str(err).split()))
        return 2
    results = predict(model, args.input, args.out, explain=args.explain, html=not args.no_html,
                      max_voxels=args.max_voxels, series_uid=args.series_uid, write_mapping=args.write_mapping,
                      explain_method=args.explain_method, explain_unvalidated=args.explain_unvalidated)
    failed = [r for r in results if r.status == "error"]
    ok = sum(r.status == "ok" for r in results)
    warned = sum(bool(r.warnings) for r in results)
    print(f"{ok} scan(s) ok ({warned} with field-of-view warnings), {len(results) - ok - len(failed)} skipped "
          f"(localizers only), {len(failed)} failed; results in {args.out}")
    return 1 if (failed and args.strict) else 0


def _method(spec: str) -> str:
    """``--explain-method``, checked by ``ctxray.inference.heatmap.method_spec`` (an error names the options)."""
    from ctxray.inference.heatmap import method_spec

    try:
        method_spec(spec)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return spec
