"""The training configuration: one dataclass per concern, stored in every checkpoint.

``TrainConfig`` nests ``model`` (the dual encoder, ``ctxray.models.dual.DualEncoderConfig``), ``loss``,
``optim`` and ``data``. Read it with ``ctxray.config.load_config(TrainConfig, FILE, ["a.b=c", ...])``;
``configs/*.yaml`` hold examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ctxray.config import from_dict
from ctxray.models.dual import DualEncoderConfig
from ctxray.models.text import TextEncoderConfig

LOSS_TERMS = ("roco", "pkd", "srkd", "mlm", "prompt")
"""The loss terms, in the order the objective logs them; each is a weight of ``LossConfig``."""


@dataclass
class LossConfig:
    """The BIUD objective ``L = w_roco*L_RoCo + pkd*L_PKD + srkd*L_SRKD + mlm*L_MLM + prompt*L_prompt``.

    Args:
        roco: weight of the (robust) contrastive term; 0 switches it off.
        correction: false-negative handling of L_RoCo; ``none`` is plain CLIP InfoNCE.
        false_negatives: what marks two reports as equivalent: equal label vectors (``labels``,
            the dataset's labels), or the teacher's text embeddings of the reports (``text``, the
            targets' ``ct_text``) with cosine above ``fn_threshold``.
        fn_threshold: cosine threshold for ``false_negatives="text"``.
        soft_tau: temperature of the soft targets built from teacher text similarity (``soft`` only).
        pkd: weight of pair-wise distillation to the retrieved X-ray's teacher embedding.
        pkd_kind: ``cosine`` (1 - cos) or ``mse`` on normalised vectors.
        target: which cached teacher target to distil: the top-1 X-ray or the top-k mean.
        kd_center: centre the teacher targets on the gallery's mean image embedding (then re-normalise).
            Targets from one expert share a dominant direction (median pairwise cosine ~0.7 on the demo
            world); uncentred, a student that predicts the mean target scores nearly as well as one that
            reads the CT, so PKD transfers nothing. Centred, any constant prediction scores ~1 (the
            centred targets average to ~0). The student is not centred: centring a nearly collapsed batch
            and re-normalising it blows its gradient up by 1/|x| (measured: gradient norms ~200 that the
            clip turned into a frozen contrastive term).
        srkd: weight of semantic-relation distillation (KL of in-batch similarity distributions).
        srkd_tau: temperature of those distributions.
        mlm: weight of masked language modelling on the reports; > 0 adds an MLM head.
        mlm_prob: fraction of tokens masked per report.
        mlm_entity_boost: how much likelier a clinical-entity token (a word of the label phrases) is
            masked than any other token (1 = uniform masking).
        prompt: weight of the report-side prompt loss (``ctxray.losses.ReportPromptLoss``): each training
            report's embedding is scored against the zero-shot prompt ensembles (encoded by the report tower
            every step, with gradients) exactly as zero-shot scores a volume, and a binary cross-entropy
            fits those scores to the report's labels. Only the report tower (and the prompts) learn from it;
            the image tower never sees labels. 0 switches it off.
        prompt_scale: multiplier of the cosine difference in that loss (fixed; zero-shot ranking ignores it).
        prompt_labels: the labels it fits: ``labeler`` (the rule labeler's reading of each report, uncertain
            mentions left out) or ``dataset`` (the cache's label columns; on CT-RATE these are themselves
            read from the reports, on the synthetic world they are the world's truth).
        prompt_shuffle: control experiment: every report gets another training report's labels (seeded);
            the prompt loss then must not raise the prompts' score on held-out reports.
    """

    roco: float = 1.0
    correction: Literal["none", "multi_positive", "soft"] = "multi_positive"
    false_negatives: Literal["labels", "text"] = "labels"
    fn_threshold: float = 0.95
    soft_tau: float = 0.05
    pkd: float = 1.0
    pkd_kind: Literal["cosine", "mse"] = "cosine"
    target: Literal["top1", "topk_mean"] = "top1"
    kd_center: bool = True
    srkd: float = 1.0
    srkd_tau: float = 0.1
    mlm: float = 0.0
    mlm_prob: float = 0.15
    mlm_entity_boost: float = 3.0
    prompt: float = 0.0
    prompt_scale: float = 10.0
    prompt_labels: Literal["labeler", "dataset"] = "labeler"
    prompt_shuffle: bool = False

    @property
    def distils(self) -> bool:
        """Whether a distillation term (pair-wise or relation KD) is on: the model has a KD head and reads targets."""
        return self.pkd > 0 or self.srkd > 0


@dataclass
class OptimConfig:
    """AdamW with warm-up and a cosine decay.

    Args:
        lr: peak learning rate.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        weight_decay: applied to weight matrices only (never norms, biases, the temperature, 1-D).
        betas, eps: AdamW's.
        epochs: passes over the training split.
        warmup_steps: linear warm-up in optimiser steps (capped at a tenth of the run when longer).
        grad_accum: micro-batches per optimiser step (each micro-batch has its own negatives).
        clip_norm: global gradient-norm clip; 0 disables.
        precision: ``auto`` is bf16 autocast on a GPU that supports it, fp32 on CPU.
        text_lr_scale: learning rate of the report tower's encoder (``text_encoder.*``; its projection
            keeps ``lr``) as a fraction of ``lr``; 0 freezes it. A pretrained tower (``text_init=teacher``
            with the MiniLM expert, ``text_init=hf``) is wrecked at a from-scratch rate: use ~0.01-0.05 or 0.
    """

    lr: float = 3e-4
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    epochs: int = 10
    warmup_steps: int = 50
    grad_accum: int = 1
    clip_norm: float = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    text_lr_scale: float = 1.0


@dataclass
class DataConfig:
    """Where the pairs come from.

    Args:
        cache: a preprocess cache folder (``ctxray preprocess --out C``). With ``shards`` set it is optional and
            serves validation only (when ``val_shards`` is unset).
        shards: a shard set of the training split (``ctxray shard C --out S --split train``), a local folder or
            an fsspec URL (``s3://...``); when set, training streams it (``ctxray.train.shard_data``) instead of
            reading ``cache``: spec, reports and labels come from the shard set.
        val_shards: a shard set of the validation split (``--split valid``); validation reads it when set.
        shard_buffer: shuffle-buffer size per DataLoader worker when reading ``shards``.
        retrieval: a retrieval folder (``ctxray retrieve --out R``); needed by the KD terms and by
            ``false_negatives="text"``.
        train_split, val_split: manifest split names; an empty ``val_split`` skips validation.
        batch_size: volumes per process per micro-batch (the contrastive batch is
            ``batch_size * world_size``).
        max_train: use only this many training pairs (a seeded subset), e.g. for few-pair studies.
        max_val: validate on at most this many volumes.
        augment: ``ctxray.data.dataset.Augment`` fields (crop_zyx, flip_prob_zyx, scale, shift, noise_std);
            None: off. Draws depend on (seed, epoch, index) only.
        num_workers: DataLoader worker processes per rank.
        shuffle_targets: control experiment: permute the teacher targets across CTs (seeded).
        max_truncated: largest share of training reports the report tower may cut at
            ``model.text.max_length``; above it the run stops with an error (any cut is logged and recorded
            in ``RUN/report_tokens.json``). A cut report loses its last sections (the lungs, the impression).
        mirror_pairs: share of each micro-batch (0 to 0.5) given to left-right mirror images of other pairs of
            the batch whose report names a side, with "left" and "right" swapped in the report
            (:func:`ctxray.train.data.mirror_pairs`): hard negatives that differ only in sides. The false-negative
            correction never counts a pair and its mirror as equivalent. 0: off.
    """

    cache: str = ""
    shards: str | None = None
    val_shards: str | None = None
    shard_buffer: int = 64
    retrieval: str | None = None
    train_split: str = "train"
    val_split: str = "valid"
    batch_size: int = 8
    max_train: int | None = None
    max_val: int | None = None
    augment: dict[str, Any] | None = None
    num_workers: int = 0
    shuffle_targets: bool = False
    max_truncated: float = 0.01
    mirror_pairs: float = 0.0


def _demo_text() -> TextEncoderConfig:
    return TextEncoderConfig(kind="bert", hidden=64, layers=2, heads=2, max_length=512, dropout=0.1, pooling="mean")


@dataclass
class ReportTowerConfig:
    """Settings of the report-tower pre-training (stored in the folder's ``config.json``).

    Args:
        text: the tower (``kind="bert"``; ``vocab_size`` is filled from the tokenizer). The default is the demo's.
        embed_dim: width of the shared space the tower projects into; must equal the CT model's ``embed_dim``.
        steps, batch_size, lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay.
        labels: what the prompts are fitted to: ``labeler`` (the rule labeler's reading of each report) or
            ``dataset`` (the cache's label columns).
        scale: the prompt loss's fixed logit multiplier.
        tokenizer_vocab: size of the WordPiece vocabulary trained on the training reports and the prompts.
        train_split, val_split: manifest splits; the validation reports (when the split exists) are only
            scored, never trained on.
        max_truncated: largest share of training reports the tower may cut at ``text.max_length``.
        seed: initialisation, batch order and dropout.
        log_every: steps between progress lines.
        sides: weight of the side term (0: off): each training report that names a side is pushed to a cosine
            of at most ``side_margin`` with the same report with "left" and "right" swapped, so that the tower
            reads sides (the prompts name none, and a side-blind tower embeds the two at cosine ~1.0).
        side_margin: the largest cosine the side term allows between a report and its side-swapped copy.
    """

    text: TextEncoderConfig = field(default_factory=_demo_text)
    embed_dim: int = 256
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    labels: Literal["labeler", "dataset"] = "labeler"
    scale: float = 10.0
    tokenizer_vocab: int = 4000
    train_split: str = "train"
    val_split: str = "valid"
    max_truncated: float = 0.01
    seed: int = 0
    log_every: int = 50
    sides: float = 0.0
    side_margin: float = 0.5

    def check(self) -> None:
        """Raise ``ValueError`` naming the setting that cannot run."""
        if self.sides < 0 or not -1.0 <= self.side_margin < 1.0:
            raise ValueError(f"sides={self.sides}, side_margin={self.side_margin}: the weight must be >= 0 and the "
                             "margin in [-1, 1)")
        if self.text.kind != "bert":
            raise ValueError(f"text.kind={self.text.kind!r}: pre-training builds a scratch 'bert' tower")
        for name in ("steps", "batch_size", "embed_dim", "tokenizer_vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.lr <= 0 or self.scale <= 0:
            raise ValueError(f"lr={self.lr}, scale={self.scale}: both must be > 0")


@dataclass
class TrainConfig:
    """Everything a training run needs, stored in ``RUN/config.json`` and every checkpoint.

    Args:
        text_init: ``scratch`` trains the text tower (and a WordPiece tokenizer on the training
            reports) from nothing; ``teacher`` starts text tower and tokenizer from the X-ray expert's
            (``teacher_dir``); ``hf`` uses ``model.text`` with ``kind="hf"`` and its folder's tokenizer;
            ``pretrained`` starts tower, projection, settings and tokenizer from a report tower pre-trained on
            the reports (``text_dir``, ``ctxray pretrain-text``).
        text_dir: the report-tower folder for ``text_init="pretrained"``.
        teacher_dir: the teacher folder (``ctxray teacher train --out T``) for ``text_init="teacher"``.
        encoder_init: a local ``.safetensors`` of the volume encoder's weights to start from (e.g. a
            previous run's encoder); a ViT position embedding of another grid is interpolated.
        tokenizer_vocab: vocabulary size of a tokenizer trained from scratch.
        seed: seeds model initialisation, data order, masking and dropout.
        device: ``auto`` picks CUDA (the local rank's GPU) when available.
        log_every: optimiser steps between log lines (the JSONL log has every step).
        save_every: optimiser steps between ``last`` checkpoints (0: at epoch ends only).
        val_every: epochs between validations.
        tensorboard: also write ``RUN/tb``.
        code_version: filled in when a run starts (package version, git commit).
    """

    model: DualEncoderConfig = field(default_factory=DualEncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text_init: Literal["scratch", "teacher", "hf", "pretrained"] = "scratch"
    text_dir: str | None = None
    teacher_dir: str | None = None
    encoder_init: str | None = None
    tokenizer_vocab: int = 4000
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 10
    save_every: int = 0
    val_every: int = 1
    tensorboard: bool = True
    code_version: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ``ValueError`` naming the setting when the combination cannot run."""
        lo, op, da = self.loss, self.optim, self.data
        for name in LOSS_TERMS:
            if getattr(lo, name) < 0:
                raise ValueError(f"loss.{name}={getattr(lo, name)}: weights must be >= 0")
        if lo.roco == lo.pkd == lo.srkd == lo.mlm == lo.prompt == 0:
            raise ValueError("loss: every weight is 0; nothing to train")
        if self.needs_targets and not da.retrieval:
            raise ValueError("data.retrieval is required by loss.pkd/srkd > 0, loss.false_negatives='text' "
                             "and loss.correction='soft' (they read the cached teacher targets)")
        if not da.cache and not da.shards:
            raise ValueError("data.cache: set the preprocess cache folder (--cache or data.cache=...) or a shard "
                             "set (--shards or data.shards=...)")
        if da.shards and da.max_train is not None:
            raise ValueError("data.max_train picks a subset of the cache; with data.shards write a smaller shard set")
        if da.val_shards and da.max_val is not None:
            raise ValueError("data.max_val picks a subset of the cache; with data.val_shards write a smaller set")
        if lo.prompt_scale <= 0:
            raise ValueError(f"loss.prompt_scale={lo.prompt_scale}: must be > 0")
        if da.batch_size < 2:
            raise ValueError(f"data.batch_size={da.batch_size}: contrastive learning needs at least 2")
        if not 0.0 <= da.mirror_pairs <= 0.5:
            raise ValueError(f"data.mirror_pairs={da.mirror_pairs}: must be in [0, 0.5] (a mirrored copy needs its "
                             "original in the batch)")
        if op.grad_accum < 1 or op.epochs < 1:
            raise ValueError("optim.grad_accum and optim.epochs must be >= 1")
        if op.text_lr_scale < 0:
            raise ValueError(f"optim.text_lr_scale={op.text_lr_scale}: must be >= 0 (0 freezes the report tower)")
        if self.text_init == "pretrained" and not self.text_dir:
            raise ValueError("text_init='pretrained' needs text_dir (a folder of ctxray pretrain-text)")
        if self.text_init == "teacher" and not self.teacher_dir:
            raise ValueError("text_init='teacher' needs teacher_dir")
        if self.model.pretrained and self.encoder_init:
            raise ValueError("model.pretrained and encoder_init both set the volume encoder's weights; choose one")
        if self.text_init == "hf" and self.model.text.kind != "hf":
            raise ValueError("text_init='hf' needs model.text.kind=hf and model.text.hf_path")

    @property
    def needs_teacher_text(self) -> bool:
        """Whether the contrastive term reads the teacher's text embeddings of the CT reports."""
        lo = self.loss
        return lo.roco > 0 and lo.correction != "none" and (lo.false_negatives == "text" or lo.correction == "soft")

    @property
    def needs_targets(self) -> bool:
        """Whether the run loads the retrieval folder's teacher targets."""
        return self.loss.distils or self.needs_teacher_text


# Settings added after runs were already saved, with the value those runs trained with (a saved config
# lacking the key is read with it, so old runs load and resume exactly as they were).
LEGACY_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"kd_from": "feature"},  # the KD head read the pooled volume feature
    "loss": {"kd_center": False},  # the targets were used as retrieved
}


def read_stored_config(data: dict[str, Any], where: str) -> TrainConfig:
    """A ``TrainConfig`` from a saved ``config.json``'s data, filling keys it predates with ``LEGACY_DEFAULTS``."""
    data = {**data}
    for section, keys in LEGACY_DEFAULTS.items():
        if isinstance(data.get(section), dict):
            data[section] = {**keys, **data[section]}
    return from_dict(TrainConfig, data, where)
