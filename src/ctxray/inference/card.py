"""The model card written into every exported model folder (``MODEL_CARD.md``)."""

from __future__ import annotations

from typing import Any

from ctxray.data.cachedir import manifest_path, read_manifest
from ctxray.train.config import LOSS_TERMS

INTENDED_USE = (
    "Research on chest-CT representation learning: zero-shot finding classification, report-volume "
    "retrieval, report generation and relevance maps on chest CT volumes, for comparing methods and for "
    "building on. Not for clinical use."
)


def _numbers(data: Any, prefix: str = "", depth: int = 2) -> list[tuple[str, float]]:
    """Scalar numbers of a metrics document up to ``depth`` levels (dotted keys)."""
    out: list[tuple[str, float]] = []
    if not isinstance(data, dict) or depth < 0:
        return out
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out.append((name, float(value)))
        elif isinstance(value, dict):
            out.extend(_numbers(value, name + ".", depth - 1))
    return out


def _training_data(config: Any) -> list[str]:
    data = getattr(config, "data", None)
    cache = getattr(data, "cache", "") if data is not None else ""
    lines = [f"- Preprocess cache: `{cache or 'unknown'}`"]
    if cache and manifest_path(cache).is_file():
        splits: dict[str, int] = {}
        for row in read_manifest(cache):
            splits[str(row.get("split"))] = splits.get(str(row.get("split")), 0) + 1
        lines.append("- Volumes per split: " + ", ".join(f"{k}: {v}" for k, v in sorted(splits.items())))
    if data is not None:
        lines.append(f"- Training split `{getattr(data, 'train_split', '?')}`, validation split "
                     f"`{getattr(data, 'val_split', '?')}`, retrieval targets `{getattr(data, 'retrieval', None)}`")
    loss = getattr(config, "loss", None)
    if loss is not None:
        terms = {k: getattr(loss, k) for k in LOSS_TERMS if hasattr(loss, k)}
        lines.append("- Loss weights: " + ", ".join(f"{k} {v:g}" for k, v in terms.items()))
    return lines


def _tower_line(info: dict) -> list[str]:
    if not info.get("text_backbone"):
        return []
    licence = info.get("text_backbone_licence") or "not stated by the source folder: check it before sharing"
    return [f"- Report tower: a pretrained Hugging Face model, included as `{info['text_backbone']}/`; its "
            f"licence: {licence}."]


def model_card(info: dict, config: Any, spec: dict, thresholds: dict[str, float], threshold_note: str,
               ckpt_metrics: dict | None, eval_metrics: dict | None, limits: str,
               localisation: dict | None = None) -> str:
    """The Markdown text of the model card.

    Args:
        info: ``model.json`` content.
        config: the run's ``TrainConfig``.
        spec: the preprocessing spec as a dict.
        thresholds: decision threshold per label; ``threshold_note`` says where they come from.
        ckpt_metrics: the checkpoint's validation metrics (training-time), or None.
        eval_metrics: the evaluation's ``metrics.json``, or None.
        limits: the limits section.
        localisation: the ``localisation.json`` record (``ctxray.inference.pointing.validated_labels``), or None.
    """
    lines = [f"# ctxray model card ({info['encoder']}, exported {info['created']})", "",
             "## Model", "",
             f"- Volume encoder `{info['encoder']}` on input (D, H, W) = {tuple(info['input_shape'])}; shared "
             f"embedding width {info['embed_dim']}; report decoder: {'yes' if info['has_decoder'] else 'no'}.",
             f"- Method: BIUD-style CT-report contrastive training with X-ray expert distillation (ctxray "
             f"{info['ctxray_version']}, code {info.get('code_version', {}).get('git', 'unknown')[:12]}).",
             f"- Preprocessing: spec `{spec.get('name')}`: spacing (z, y, x) {spec.get('spacing_zyx')} mm, shape "
             f"{spec.get('shape_zyx')}, HU window [{spec.get('hu_min')}, {spec.get('hu_max')}], fit "
             f"`{spec.get('fit', 'crop_pad')}`; the same spec is applied at inference.",
             *_tower_line(info),
             "", "## Data", "", *_training_data(config), "", "## Metrics", ""]
    per_label: dict = {}
    if eval_metrics:
        lines.append("Evaluation (`metrics.json` given to `ctxray export`):")
        zs = eval_metrics.get("zero_shot") if isinstance(eval_metrics.get("zero_shot"), dict) else None
        if zs is not None and isinstance(zs.get("macro"), dict):
            ci = zs.get("macro_ci95", {})
            lines.append(f"- zero-shot, {zs.get('n', '?')} volumes, {zs.get('n_labels_evaluated', '?')} labels "
                         "evaluated; macro (95% CI):")
            for k, v in zs["macro"].items():
                lo, hi = (ci.get(k) or [float("nan")] * 2)[:2]
                lines.append(f"  - zero_shot.macro.{k}: {v:.4f} ({lo:.4f}-{hi:.4f})")
            per_label = zs.get("per_label", {}) or {}
        else:
            lines += [f"- {k}: {v:.4g}" for k, v in _numbers(eval_metrics)[:40]]
    else:
        lines.append("No evaluation metrics were given to `ctxray export`.")
    if ckpt_metrics:
        lines += ["", "Validation during training (the checkpoint's `metrics.json`):"]
        lines += [f"- {k}: {v:.4g}" for k, v in _numbers(ckpt_metrics)[:20]]
    lines += ["", "## Decision thresholds", "", f"Source: {threshold_note}.", "",
              "| label | threshold | zero-shot AUROC | positives / n |", "|---|---:|---:|---:|"]
    for name, t in thresholds.items():
        row = per_label.get(name, {})
        auc = f"{row['auroc']:.4f}" if isinstance(row.get("auroc"), float) else "-"
        counts = f"{row['n_pos']} / {row['n']}" if "n" in row else "-"
        lines.append(f"| {name} | {t:.4f} | {auc} | {counts} |")
    lines += ["", "## Relevance maps", "", *localisation_lines(localisation)]
    lines += ["", "## Intended use", "", INTENDED_USE, "", "## Limits", "", limits, ""]
    return "\n".join(lines)


def localisation_lines(localisation: dict | None) -> list[str]:
    """The model card's account of which labels' maps were validated (``predict`` draws only those by default)."""
    if not localisation or not localisation.get("methods"):
        return ["No label's localisation was validated for this model: `ctxray predict` draws no heatmap unless "
                "`--explain-unvalidated` is given, and then the maps are unvalidated (they show where the score is "
                "sensitive, which may not be the lesion). Validate with `bench/pointing_game.py --json` and "
                "`ctxray export --localisation`."]
    bench = localisation.get("benchmark", {})
    lines = [f"Validated with the pointing game ({localisation.get('rule')}) on {bench.get('n_volumes')} "
             f"`{bench.get('split')}` volumes of `{bench.get('world')}`. Maps of other labels are off by default.", "",
             "| method | validated labels (hit rate, true positives) |", "|---|---|"]
    for method, rec in localisation["methods"].items():
        ok = ", ".join(f"{k} ({rec['measured'][k]['rate']:.2f}, n={rec['measured'][k]['n']})"
                       for k in rec["validated"]) or "none"
        lines.append(f"| {method} | {ok} |")
    return lines


def limits_section(card_text: str) -> str:
    """The text under ``## Limits`` of a model card (the whole card if it has no such section)."""
    marker = "## Limits"
    if marker not in card_text:
        return card_text.strip()
    rest = card_text.split(marker, 1)[1]
    return rest.split("\n## ", 1)[0].strip()
