"""``ctxray export``: a training run -> a self-describing model folder that ``ctxray.load`` reads.

Layout of ``MODEL_DIR`` (every file listed with its SHA-256 in ``manifest.json``)::

    model.json          format version, software version, source run, embedding width, heatmap method
    encoder/            the checkpoint as training wrote it: model.safetensors, config.json
                        (the TrainConfig), tokenizer/
    text_backbone/      an ``hf`` report tower's Hugging Face folder (config, safetensors weights, tokenizer
                        files, licence, README); encoder/config.json names it by this relative path
    spec.json           the preprocessing spec of the cache the model was trained on
    labels.json         the label set (names, prompt templates, phrases)
    prompts.json        the filled-in positive / negative prompts per label
    thresholds.json     decision threshold per label and where it came from
    MODEL_CARD.md       data, metrics, intended use, limits
    decoder/            optional: the report generator folder (``ctxray generate``)
    localisation.json   optional: the pointing benchmark given with ``--localisation`` and the labels whose
                        maps it validated (``predict`` draws maps only for those unless told otherwise)
    manifest.json       {"format": 1, "files": {relative path: sha256}}

Nothing in it is pickled: tensors are safetensors, everything else JSON or text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ctxray.labels import LabelSet, load_labels
from ctxray.utils.io import atomic_write_text, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCALISATION = "localisation.json"
ENCODER_DIR, DECODER_DIR = "encoder", "decoder"
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


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_metrics_checkpoint(metrics_path: str | Path, ckpt: Path) -> dict | None:
    """Refuse an evaluation's ``metrics.json`` that measured another checkpoint than ``ckpt``.

    ``ctxray evaluate`` records the SHA-256 of the weights it measured (``meta.weights_sha256``); a file
    without it (older evaluate, another tool) cannot be checked and is accepted with a warning.

    Returns:
        What the metrics say they measured (``checkpoint_resolved``, ``weights_sha256``), or None.

    Raises:
        ValueError: the metrics were measured on other weights (names both checkpoints).
    """
    from ctxray.train.checkpoint import MODEL_FILE

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
    """Decision thresholds per label from an evaluation's ``metrics.json``.

    Accepted layouts: ``{"thresholds": {label: t}}`` at the top level or under a section (e.g.
    ``"zero_shot"``), or ``{"per_label": {label: {"threshold": t}}}`` / a list of rows with ``label``
    and ``threshold``. Labels the file lacks get ``DEFAULT_THRESHOLD``.

    Returns:
        (label -> threshold, a sentence on their source).

    Raises:
        ValueError: if the file cannot be read or holds no threshold for any of ``names``.
    """
    if metrics_path is None:
        return {n: DEFAULT_THRESHOLD for n in names}, (
            f"default {DEFAULT_THRESHOLD} for every label (no validation metrics were given to ctxray export)")
    path = Path(metrics_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read evaluation metrics: {err}") from err
    found, note = _evaluate_thresholds(data, path)
    if not found:
        found = _find_thresholds(data, set(names))
        note = f"chosen on validation, read from {path.name}"
    if not found:
        raise ValueError(f"{path}: no per-label thresholds found (expected a 'thresholds' mapping or per-label "
                         f"rows with 'threshold')")
    missing = [n for n in names if n not in found]
    out = {n: float(found.get(n, DEFAULT_THRESHOLD)) for n in names}
    if missing:
        note += f"; default {DEFAULT_THRESHOLD} for {len(missing)} label(s) without one: {', '.join(missing)}"
    return out, note


def _evaluate_thresholds(data: Any, path: Path) -> tuple[dict[str, float], str]:
    """Per-volume thresholds of ``ctxray evaluate``'s ``metrics.json`` (``zero_shot.thresholds``)."""
    zs = data.get("zero_shot") if isinstance(data, dict) else None
    th = zs.get("thresholds") if isinstance(zs, dict) else None
    if not (isinstance(th, dict) and isinstance(th.get("per_volume"), dict)):
        return {}, ""
    note = (f"{th.get('rule', 'per-label thresholds')} on split '{th.get('split', '?')}', per volume, read from "
            f"{path.name}; {th.get('note', '')}".rstrip("; "))
    return {k: float(v) for k, v in th["per_volume"].items() if isinstance(v, int | float)}, note


def _find_thresholds(node: Any, names: set[str]) -> dict[str, float]:
    """Depth-first search for the first label -> threshold mapping in a metrics document."""
    if isinstance(node, dict):
        th = node.get("thresholds")
        if isinstance(th, dict) and names & set(th) and all(isinstance(v, int | float) for v in th.values()):
            return {k: float(v) for k, v in th.items() if k in names}
        rows = {k: v for k, v in node.items() if k in names and isinstance(v, dict) and "threshold" in v}
        if rows:
            return {k: float(v["threshold"]) for k, v in rows.items()}
        for value in node.values():
            hit = _find_thresholds(value, names)
            if hit:
                return hit
    elif isinstance(node, list):
        rows = {r.get("label", r.get("name")): r["threshold"] for r in node
                if isinstance(r, dict) and "threshold" in r and r.get("label", r.get("name")) in names}
        if rows:
            return {k: float(v) for k, v in rows.items()}
        for value in node:
            hit = _find_thresholds(value, names)
            if hit:
                return hit
    return {}


def _label_set(config: Any) -> tuple[LabelSet, str]:
    """The run's label set and its JSON text (the packaged one unless the config names a file)."""
    path = getattr(getattr(config, "data", None), "labels", None) or getattr(config, "labels", None)
    if path:
        return load_labels(str(path)), Path(path).read_text()
    from importlib import resources

    return load_labels(), resources.files("ctxray").joinpath("resources/labels.json").read_text()


def _spec_path(config: Any, spec: str | Path | None) -> Path:
    if spec is not None:
        p = Path(spec)
    else:
        data = getattr(config, "data", None)
        cache = getattr(data, "cache", "") or getattr(data, "shards", "") or ""  # both hold spec.json
        if not cache:
            raise ValueError("the run's config names no cache (data.cache); pass --spec SPEC.json")
        p = Path(cache) / "spec.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: preprocessing spec not found (the training cache moved? pass --spec)")
    return p


def _copy_checkpoint(ckpt: Path, dest: Path) -> None:
    """Copy what a model needs from a checkpoint folder (never the optimiser state)."""
    dest.mkdir(parents=True)
    for name in ("model.safetensors", "config.json"):
        shutil.copy2(ckpt / name, dest / name)
    shutil.copytree(ckpt / "tokenizer", dest / "tokenizer")


# What a Hugging Face tower folder needs (top-level files only): config, weights, tokenizer, licence, README.
HF_KEEP = ("config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "*.model",
           "LICEN[CS]E*", "COPYING*", "NOTICE*", "README*")


def copy_text_backbone(src: Path, dest: Path, backbone: Any) -> list[str]:
    """Copy an ``hf`` report tower's folder into ``dest`` (a model or run folder's ``text_backbone/``).

    Only what loading needs plus the licence and README travel (not ONNX/TF exports or sentence-transformers
    extras). A folder whose weights are pickled only (``pytorch_model.bin``) gets ``model.safetensors``
    written from ``backbone`` instead, so loading never unpickles.

    Args:
        src: the source Hugging Face folder.
        dest: the folder to create.
        backbone: the loaded ``transformers`` model (used only when ``src`` has no safetensors weights).

    Returns:
        The copied file names.
    """
    dest.mkdir(parents=True)
    names = sorted({p.name for pattern in HF_KEEP for p in src.glob(pattern) if p.is_file()})
    for name in names:
        shutil.copy2(src / name, dest / name)
    if not any(n.endswith(".safetensors") for n in names):
        log.info("%s has no safetensors weights; writing %s/model.safetensors from the loaded tower", src, dest.name)
        backbone.save_pretrained(str(dest), safe_serialization=True)
        names = sorted(p.name for p in dest.iterdir())
    if tower_licence(dest) is None:
        log.warning("%s states no licence (no LICENSE file, no 'license:' in its README); check the report "
                    "tower's licence before sharing the model folder", src)
    return names


def tower_licence(folder: Path) -> str | None:
    """A Hugging Face folder's licence: its licence file's name, else the ``license:`` of its README's front
    matter (how Hugging Face model cards state it, e.g. ``apache-2.0``), else None."""
    files = sorted(p.name for pattern in ("LICEN[CS]E*", "COPYING*") for p in folder.glob(pattern) if p.is_file())
    if files:
        return files[0]
    readme = folder / "README.md"
    text = readme.read_text(errors="replace") if readme.is_file() else ""
    if text.startswith("---"):
        for line in text.split("---", 2)[1].splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() == "license" and value.strip():
                return value.strip()
    return None


def _point_config_at(config_file: Path, rel: str) -> None:
    """Rewrite ``model.text.hf_path`` of a stored TrainConfig to ``rel`` (relative to the model folder)."""
    data = json.loads(config_file.read_text())
    data["model"]["text"]["hf_path"] = rel
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True))


def make_readable(root: Path) -> None:
    """Give every file under ``root`` the default permissions (``0o666 & ~umask``).

    Atomic writes go through ``mkstemp`` files, which are private (0600); outputs meant to be shared
    (model folders, reports) should not be.
    """
    mask = os.umask(0)
    os.umask(mask)
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if p.is_file():
            p.chmod(0o666 & ~mask)


def write_manifest(model_dir: Path) -> dict[str, str]:
    """Hash every file under ``model_dir`` (except the manifest) into ``manifest.json``."""
    files = {p.relative_to(model_dir).as_posix(): sha256_file(p)
             for p in sorted(model_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    _write_json(model_dir / MANIFEST, {"format": FORMAT_VERSION, "files": files})
    return files


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
    from ctxray.inference.card import model_card
    from ctxray.train.checkpoint import (
        TEXT_BACKBONE_DIR,
        load_model,
        model_root,
        resolve_checkpoint,
        text_backbone_path,
    )

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty (use --overwrite)")
    ckpt = resolve_checkpoint(run, prefer)
    model, _tokenizer, config = load_model(ckpt)  # proves the checkpoint loads before we write anything
    label_set, labels_text = _label_set(config)
    spec_file = _spec_path(config, spec)
    measured_on = check_metrics_checkpoint(metrics, ckpt) if metrics else None
    thresholds, threshold_note = read_thresholds(metrics, label_set.names)
    if decoder is not None:
        from ctxray.inference.report import check_decoder_spec

        if not Path(decoder).is_dir():
            raise FileNotFoundError(f"{decoder}: report decoder folder not found")
        check_decoder_spec(decoder, spec_file)
    spec_dict = json.loads(spec_file.read_text())
    backbone = text_backbone_path(config, model_root(ckpt))  # an hf tower: copied into the folder
    info = {
        "format": FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "ctxray_version": _version(),
        "source_checkpoint": str(ckpt.resolve()),
        "thresholds_measured_on": measured_on,
        "embed_dim": int(model.cfg.embed_dim),
        "encoder": model.cfg.encoder,
        "input_shape": list(spec_dict["shape_zyx"]),
        "has_decoder": decoder is not None,
        "text_backbone": TEXT_BACKBONE_DIR if backbone is not None else None,
        "text_backbone_licence": tower_licence(backbone) if backbone is not None else None,
        "external_paths": [],  # everything the model needs is inside the folder
        "code_version": dict(getattr(config, "code_version", {}) or {}),
    }
    loc = None
    if localisation is not None:
        from ctxray.inference.pointing import validated_labels

        loc = validated_labels(json.loads(Path(localisation).read_text()))
    card = model_card(info, config, spec_dict, thresholds, threshold_note, _read_json_or_none(ckpt / "metrics.json"),
                      _read_json_or_none(Path(metrics)) if metrics else None, LIMITS, localisation=loc)
    prompts = {n: dict(zip(("positive", "negative"), label_set.prompts(n))) for n in label_set.names}

    def write(tmp: Path) -> None:
        _copy_checkpoint(ckpt, tmp / ENCODER_DIR)
        if backbone is not None:
            copy_text_backbone(backbone, tmp / TEXT_BACKBONE_DIR, model.text_encoder.backbone)
            _point_config_at(tmp / ENCODER_DIR / "config.json", TEXT_BACKBONE_DIR)
        shutil.copy2(spec_file, tmp / "spec.json")
        atomic_write_text(tmp / "labels.json", labels_text)
        _write_json(tmp / "prompts.json", prompts)
        _write_json(tmp / "thresholds.json", {"rule": "positive when probability >= threshold",
                                              "source": threshold_note, "thresholds": thresholds})
        if decoder is not None:
            shutil.copytree(decoder, tmp / DECODER_DIR)
        _write_json(tmp / "model.json", info)
        if loc is not None:
            _write_json(tmp / LOCALISATION, loc)
        atomic_write_text(tmp / "MODEL_CARD.md", card)
        write_manifest(tmp)
        make_readable(tmp)

    _write_folder(out, write)
    log.info("exported %s -> %s", ckpt, out)
    return out


def _write_folder(dest: Path, write: Any) -> None:
    """Write a folder as ``write(tmp)`` next to ``dest``, then swap it in (no half-written model folder)."""
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _read_json_or_none(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _version() -> str:
    import ctxray

    return ctxray.__version__
