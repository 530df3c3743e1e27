"""``ctxray export``: a training run -> a self-describing model folder that ``ctxray.load`` reads.

The folder's layout and ``model.json`` schema are defined in :mod:`ctxray.inference.folder`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from ctxray import __version__
from ctxray.data.cachedir import spec_path
from ctxray.evaluate.protocol import read_threshold_block
from ctxray.inference.card import model_card
from ctxray.inference.folder import (
    DECODER_DIR,
    ENCODER_DIR,
    FORMAT_VERSION,
    LABELS_JSON,
    LOCALISATION,
    MODEL_CARD,
    MODEL_JSON,
    SPEC_JSON,
    THRESHOLD_RULE,
    THRESHOLDS_JSON,
    ModelInfo,
    write_json,
    write_manifest,
)
from ctxray.inference.pointing import validated_labels
from ctxray.inference.report import check_decoder_spec
from ctxray.labels import load_labels, packaged_labels_text
from ctxray.models.hf_folder import copy_text_backbone, tower_licence
from ctxray.train.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    TEXT_BACKBONE_DIR,
    TOKENIZER_DIR,
    load_model,
    model_root,
    resolve_checkpoint,
    text_backbone_path,
)
from ctxray.utils.io import atomic_write_dir, atomic_write_text, make_readable, sha256_file

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
LIMITS = (
    "Research use only; not a medical device. Not validated for diagnosis, triage or treatment decisions.\n"
    "- Zero-shot probabilities come from prompt similarity; they are not calibrated risks.\n"
    "- Trained on the data named above only; scanners, protocols, populations and report styles it did not "
    "see may degrade it without warning. A model trained on the synthetic world knows nothing about real "
    "anatomy.\n"
    "- Labels for training and evaluation may be text-mined from reports (CT-RATE's are predicted by a "
    "text classifier), so the metrics inherit their errors.\n"
    "- Heatmaps show where the model's score is sensitive, not where a lesion is; check them against the "
    "image.\n"
    "- Generated reports can state findings that are absent and omit findings that are present."
)


def check_metrics_checkpoint(metrics_path: str | Path, ckpt: Path) -> dict | None:
    """Refuse an evaluation's ``metrics.json`` that measured another checkpoint than ``ckpt``.

    ``ctxray evaluate`` records the SHA-256 of the weights it measured (``meta.weights_sha256``); a file
    without it (older evaluate, another tool) cannot be checked and is accepted with a warning.

    Returns:
        What the metrics say they measured (``checkpoint_resolved``, ``weights_sha256``), or None.

    Raises:
        ValueError: the metrics were measured on other weights (names both checkpoints).
    """
    path = Path(metrics_path)
    try:
        meta = json.loads(path.read_text()).get("meta") or {}
    except (OSError, json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{path}: cannot read evaluation metrics: {err}") from err
    measured = meta.get("weights_sha256")
    if not measured:
        log.warning("%s records no checkpoint fingerprint (meta.weights_sha256): cannot check that its thresholds "
                    "were measured on %s", path, ckpt)
        return None
    if measured != sha256_file(ckpt / MODEL_FILE):
        raise ValueError(f"{path}: its thresholds and metrics were measured on {meta.get('checkpoint_resolved', '?')} "
                         f"(weights {measured[:12]}...), not on the checkpoint being exported ({ckpt}); evaluate "
                         "this checkpoint, or export the one that was evaluated (--checkpoint)")
    return {"checkpoint_resolved": meta.get("checkpoint_resolved"), "weights_sha256": measured}


def read_thresholds(metrics_path: str | Path | None, names: list[str]) -> tuple[dict[str, float], str]:
    """Decision thresholds per label from ``ctxray evaluate``'s ``metrics.json`` (its per-volume thresholds,
    :func:`ctxray.evaluate.protocol.read_threshold_block`). Labels the file lacks get ``DEFAULT_THRESHOLD``.

    Returns:
        (label -> threshold, a sentence on their source).

    Raises:
        ValueError: if the file cannot be read or holds no ``zero_shot.thresholds.per_volume`` block.
    """
    if metrics_path is None:
        return {n: DEFAULT_THRESHOLD for n in names}, (
            f"default {DEFAULT_THRESHOLD} for every label (no validation metrics were given to ctxray export)")
    path = Path(metrics_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read evaluation metrics: {err}") from err
    block = read_threshold_block(data)
    if block is None:
        raise ValueError(f"{path}: no per-label thresholds found (expected the zero_shot.thresholds.per_volume "
                         "block of a `ctxray evaluate` metrics.json)")
    found = {k: v for k, v in block.per_volume.items() if k in names}
    note = (f"{block.rule} on split '{block.split}', per volume, read from {path.name}; {block.note}").rstrip("; ")
    missing = [n for n in names if n not in found]
    out = {n: float(found.get(n, DEFAULT_THRESHOLD)) for n in names}
    if missing:
        note += f"; default {DEFAULT_THRESHOLD} for {len(missing)} label(s) without one: {', '.join(missing)}"
    return out, note


def _spec_path(config: Any, spec: str | Path | None) -> Path:
    if spec is not None:
        p = Path(spec)
    else:
        data = getattr(config, "data", None)
        cache = getattr(data, "cache", "") or getattr(data, "shards", "") or ""  # both hold spec.json
        if not cache:
            raise ValueError("the run's config names no cache (data.cache); pass --spec SPEC.json")
        p = spec_path(cache)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: preprocessing spec not found (the training cache moved? pass --spec)")
    return p


def _copy_checkpoint(ckpt: Path, dest: Path) -> None:
    """Copy what a model needs from a checkpoint folder (never the optimiser state)."""
    dest.mkdir(parents=True)
    for name in (MODEL_FILE, CONFIG_FILE):
        shutil.copy2(ckpt / name, dest / name)
    shutil.copytree(ckpt / TOKENIZER_DIR, dest / TOKENIZER_DIR)


def _point_config_at(config_file: Path, rel: str) -> None:
    """Rewrite ``model.text.hf_path`` of a stored TrainConfig to ``rel`` (relative to the model folder)."""
    data = json.loads(config_file.read_text())
    data["model"]["text"]["hf_path"] = rel
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True))


def export_model(run: str | Path, out: str | Path, decoder: str | Path | None = None,
                 metrics: str | Path | None = None, spec: str | Path | None = None,
                 prefer: str = "best", overwrite: bool = False, localisation: str | Path | None = None) -> Path:
    """Write a model folder from a training run.

    Args:
        run: a run folder (``ctxray train --out RUN``) or one of its checkpoint folders.
        out: the model folder to create.
        decoder: a report-generator folder to include (``ctxray generate``), or None.
        metrics: an evaluation's ``metrics.json`` holding per-label thresholds chosen on validation.
        spec: the preprocessing spec file; by default ``spec.json`` of the run's cache.
        prefer: ``best`` or ``last`` checkpoint of a run folder.
        overwrite: replace an existing ``out``.
        localisation: ``bench/pointing_game.py --json`` output measured on this model; the labels whose maps
            it validated get heatmaps by default in ``predict`` (none without it).

    Returns:
        The model folder.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (use --overwrite)")
    ckpt = resolve_checkpoint(run, prefer)
    model, _tokenizer, config = load_model(ckpt)  # proves the checkpoint loads before we write anything
    label_set, labels_text = load_labels(), packaged_labels_text()  # training always uses the packaged labels
    spec_file = _spec_path(config, spec)
    measured_on = check_metrics_checkpoint(metrics, ckpt) if metrics else None
    thresholds, threshold_note = read_thresholds(metrics, label_set.names)
    if decoder is not None:
        if not Path(decoder).is_dir():
            raise FileNotFoundError(f"{decoder}: report decoder folder not found")
        check_decoder_spec(decoder, spec_file)
    spec_dict = json.loads(spec_file.read_text())
    backbone = text_backbone_path(config, model_root(ckpt))  # an hf tower: copied into the folder
    info = ModelInfo(
        format=FORMAT_VERSION,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        ctxray_version=__version__,
        source_checkpoint=str(ckpt.resolve()),
        thresholds_measured_on=measured_on,
        embed_dim=int(model.cfg.embed_dim),
        encoder=model.cfg.encoder,
        input_shape=list(spec_dict["shape_zyx"]),
        has_decoder=decoder is not None,
        text_backbone=TEXT_BACKBONE_DIR if backbone is not None else None,
        text_backbone_licence=tower_licence(backbone) if backbone is not None else None,
        external_paths=[],  # everything the model needs is inside the folder
        code_version=dict(getattr(config, "code_version", {}) or {}),
    )
    loc = validated_labels(json.loads(Path(localisation).read_text())) if localisation is not None else None
    card = model_card(info.to_dict(), config, spec_dict, thresholds, threshold_note,
                      _read_json_or_none(ckpt / "metrics.json"), _read_json_or_none(Path(metrics)) if metrics else None,
                      LIMITS, localisation=loc)

    def write(tmp: Path) -> None:
        _copy_checkpoint(ckpt, tmp / ENCODER_DIR)
        if backbone is not None:
            copy_text_backbone(backbone, tmp / TEXT_BACKBONE_DIR, model.text_encoder.backbone)
            _point_config_at(tmp / ENCODER_DIR / CONFIG_FILE, TEXT_BACKBONE_DIR)
        shutil.copy2(spec_file, tmp / SPEC_JSON)
        atomic_write_text(tmp / LABELS_JSON, labels_text)
        write_json(tmp / THRESHOLDS_JSON, {"rule": THRESHOLD_RULE, "source": threshold_note, "thresholds": thresholds})
        if decoder is not None:
            shutil.copytree(decoder, tmp / DECODER_DIR)
        write_json(tmp / MODEL_JSON, info.to_dict())
        if loc is not None:
            write_json(tmp / LOCALISATION, loc)
        atomic_write_text(tmp / MODEL_CARD, card)
        write_manifest(tmp)
        make_readable(tmp)

    atomic_write_dir(out, write)
    log.info("exported %s -> %s", ckpt, out)
    return out


def _read_json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
