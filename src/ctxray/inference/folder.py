"""The exported model folder as a contract: its layout, the schema of ``model.json``, and its checks.

``ctxray export`` (:mod:`ctxray.inference.export`) writes this layout and ``ctxray.load``
(:mod:`ctxray.inference.api`) reads it; both take every name from here. Layout of ``MODEL_DIR`` (every file
listed with its SHA-256 in ``manifest.json``)::

    model.json          ModelInfo: format version, software version, source run, embedding width, ...
    encoder/            the checkpoint as training wrote it: model.safetensors, config.json
                        (the TrainConfig), tokenizer/
    text_backbone/      an ``hf`` report tower's Hugging Face folder (config, safetensors weights, tokenizer
                        files, licence, README); encoder/config.json names it by this relative path
    spec.json           the preprocessing spec of the cache the model was trained on
    labels.json         the label set (names, prompt templates, phrases): the zero-shot prompts come from it
    thresholds.json     decision threshold per label and where it came from
    MODEL_CARD.md       data, metrics, intended use, limits
    decoder/            optional: the report generator folder (``ctxray generate``)
    localisation.json   optional: the pointing benchmark given with ``--localisation`` and the labels whose
                        maps it validated (``predict`` draws maps only for those unless told otherwise)
    manifest.json       {"format": FORMAT_VERSION, "files": {relative path: sha256}}

Nothing in it is pickled: tensors are safetensors, everything else JSON or text. A folder of another
``format`` (newer or older software) is refused with a :class:`ModelFolderError` that says which.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctxray.data.spec import PreprocessSpec
from ctxray.labels import LabelSet, load_labels
from ctxray.train.checkpoint import TEXT_BACKBONE_DIR
from ctxray.utils.io import atomic_write_text, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_JSON = "model.json"
SPEC_JSON = "spec.json"
LABELS_JSON = "labels.json"
THRESHOLDS_JSON = "thresholds.json"
MODEL_CARD = "MODEL_CARD.md"
LOCALISATION = "localisation.json"
ENCODER_DIR, DECODER_DIR = "encoder", "decoder"
READ_DIRS = (ENCODER_DIR, TEXT_BACKBONE_DIR, DECODER_DIR)  # folders whose every file loading may read
THRESHOLD_RULE = "positive when probability >= threshold"


class ModelFolderError(ValueError):
    """A model folder is incomplete, altered or of another format; the message names the file and the reason."""


@dataclass
class ModelInfo:
    """``model.json``: what the folder holds and where it came from.

    Args:
        format: the folder's format version (``FORMAT_VERSION`` when written).
        created: ISO time of export. ctxray_version: the exporting software.
        source_checkpoint: the checkpoint folder exported.
        thresholds_measured_on: checkpoint and weights hash the thresholds were measured on, or None.
        embed_dim: shared embedding width. encoder: volume encoder name. input_shape: model input (D, H, W).
        has_decoder: whether ``decoder/`` is there.
        text_backbone: ``TEXT_BACKBONE_DIR`` for an ``hf`` report tower, else None; text_backbone_licence: its
            licence as found.
        external_paths: files outside the folder the model needs (always empty).
        code_version: the training run's code version record.
    """

    format: int
    created: str
    ctxray_version: str
    source_checkpoint: str
    thresholds_measured_on: dict | None
    embed_dim: int
    encoder: str
    input_shape: list[int]
    has_decoder: bool
    text_backbone: str | None
    text_backbone_licence: str | None
    external_paths: list[str] = field(default_factory=list)
    code_version: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path = MODEL_JSON) -> ModelInfo:
        """Parse ``model.json`` content (unknown keys of the same format are ignored).

        Raises:
            ModelFolderError: another format version, or a missing field.
        """
        check_format(data.get("format") if isinstance(data, dict) else None, where)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as err:
            raise ModelFolderError(f"{where}: not a model.json of format {FORMAT_VERSION} ({err})") from err


def check_format(found: Any, where: str | Path) -> None:
    """Refuse a folder of another format, saying whether it is newer or older than this software's."""
    if found == FORMAT_VERSION:
        return
    if isinstance(found, int) and found > FORMAT_VERSION:
        raise ModelFolderError(f"{where}: model folder format {found} is newer than this ctxray reads "
                               f"({FORMAT_VERSION}); upgrade ctxray")
    if isinstance(found, int):
        raise ModelFolderError(f"{where}: model folder format {found} is older than this ctxray reads "
                               f"({FORMAT_VERSION}); re-export the run with this version")
    raise ModelFolderError(f"{where}: format {found!r} is not a model folder format (expected {FORMAT_VERSION})")


def write_json(path: Path, data: Any) -> None:
    """A JSON file of the folder (indented, atomic)."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_manifest(model_dir: Path) -> dict[str, str]:
    """Hash every file under ``model_dir`` (except the manifest) into ``manifest.json``."""
    files = {p.relative_to(model_dir).as_posix(): sha256_file(p)
             for p in sorted(model_dir.rglob("*")) if p.is_file() and p.name != MANIFEST}
    write_json(model_dir / MANIFEST, {"format": FORMAT_VERSION, "files": files})
    return files


def verify_model_dir(model_dir: str | Path) -> dict[str, str]:
    """Check every file listed in ``manifest.json`` exists and has its recorded SHA-256, and that the folders
    loading reads (``encoder/``, ``text_backbone/``, ``decoder/``) hold no file the manifest does not list.

    Returns:
        relative path -> sha256 of the verified files.

    Raises:
        ModelFolderError: naming the first missing or altered file, or a folder of another format.
    """
    root = Path(model_dir)
    manifest = root / MANIFEST
    if not root.is_dir():
        raise ModelFolderError(f"{root}: model folder not found")
    try:
        data = json.loads(manifest.read_text())
        files = data["files"]
    except FileNotFoundError:
        raise ModelFolderError(f"{manifest}: missing; not a model folder written by ctxray export") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelFolderError(f"{manifest}: unreadable manifest: {err}") from err
    check_format(data.get("format"), manifest)
    for rel, digest in files.items():
        path = root / rel
        if not path.is_file():
            raise ModelFolderError(f"{path}: missing (listed in {MANIFEST})")
        actual = sha256_file(path)
        if actual != digest:
            raise ModelFolderError(f"{path}: altered (sha256 {actual[:12]}... != {digest[:12]}... in {MANIFEST})")
    for sub in READ_DIRS:
        for path in sorted((root / sub).rglob("*")):
            if path.is_file() and path.relative_to(root).as_posix() not in files:
                raise ModelFolderError(f"{path}: not listed in {MANIFEST} (added after export, or the manifest was "
                                       "edited); re-export the model")
    return dict(files)


@dataclass
class ModelFolder:
    """Everything of a verified model folder except the weights (``encoder/`` is read by ``load_model``).

    Args:
        root: the folder. info: ``model.json``. spec: ``spec.json``. label_set: ``labels.json``.
        thresholds: label -> threshold (``thresholds.json``). card: ``MODEL_CARD.md``.
        decoder_dir: ``decoder/`` or None. localisation: ``localisation.json`` or None.
    """

    root: Path
    info: ModelInfo
    spec: PreprocessSpec
    label_set: LabelSet
    thresholds: dict[str, float]
    card: str
    decoder_dir: Path | None
    localisation: dict | None

    @property
    def encoder_dir(self) -> Path:
        return self.root / ENCODER_DIR


def read_model_folder(model_dir: str | Path) -> ModelFolder:
    """Verify a model folder (:func:`verify_model_dir`) and read its files.

    Raises:
        ModelFolderError: a missing or altered file, or another format (named).
    """
    root = Path(model_dir)
    verify_model_dir(root)
    info = ModelInfo.from_dict(json.loads((root / MODEL_JSON).read_text()), root / MODEL_JSON)
    loc_file = root / LOCALISATION
    return ModelFolder(
        root=root, info=info, spec=PreprocessSpec.load(root / SPEC_JSON),
        label_set=load_labels(str((root / LABELS_JSON).resolve())),
        thresholds=json.loads((root / THRESHOLDS_JSON).read_text())["thresholds"],
        card=(root / MODEL_CARD).read_text(),
        decoder_dir=root / DECODER_DIR if (root / DECODER_DIR).is_dir() else None,
        localisation=json.loads(loc_file.read_text()) if loc_file.is_file() else None)
