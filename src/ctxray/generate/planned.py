"""The planned generator: findings from the CT encoder, text from the training reports.

    volume --frozen CT encoder--> embedding (E,), last feature map (C, d, h, w)
      --label probe (or zero-shot prompts) + training-chosen thresholds--> plan: findings
      --side probe on the left/right thirds of the feature map (or, ``side_features="swap"``, on each label's
        score drop when one half of the volume is replaced by the mirror of the other; ``"hemithorax"``, on
        the intensity quantiles of the volume's own left and right thirds)--> plan: sides
      --SentenceBank.realise(plan, nearest training volumes)--> Findings + Impression

Why this design: with the current encoders a learnt decoder writes the majority (normal) report, because
the language model's loss is dominated by the normal sentences every report shares. Here the clinical
content is an explicit decision per label taken from what the encoder sees (and checkable on its own:
the plan's F1), and the wording is copied from real training sentences, so fluency matches the normal
template where the scan is normal and a report cannot contradict itself. A better encoder improves the
plan without any change to the text side.

Generator folder ``G`` (``ctxray generate plan --out G``)::

    G/config.json         {"kind": "planned", "planned": PlannedConfig, "encoder": description,
                           "labels": [...], "sided": [...], "thresholds": [...]}
    G/encoder.safetensors the frozen volume encoder (+ ``proj.*``: its projection to the joint space)
    G/planner.safetensors label probe / zero-shot prompt embeddings, side probe, training embeddings
    G/bank.json           training report sections (the sentence bank) and the skeleton report
    G/spec.json           the cache's preprocessing spec
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file, save_file
from torch import nn

from ctxray.config import from_dict, to_dict
from ctxray.data.text import report_text
from ctxray.generate.checks import side_hits_summary, truth_sides
from ctxray.generate.plan import (
    LabelProbe,
    Plan,
    SideProbe,
    f1_thresholds,
    plan_matrix,
    plans_from_reports,
    plans_from_scores,
    side_set,
    side_targets,
)
from ctxray.generate.realise import SentenceBank
from ctxray.generate.train import freeze
from ctxray.labeler import label_names
from ctxray.models.registry import create_volume_encoder
from ctxray.utils.io import atomic_write_text
from ctxray.utils.progress import progress

log = logging.getLogger(__name__)

Features = dict[str, np.ndarray]


@dataclass
class PlannedConfig:
    """Settings of the planned generator (stored in ``G/config.json``).

    Args:
        planner: ``probe`` (logistic regression per label on the training split) or ``zeroshot``.
        probe_features: ``embedding`` (joint-space vector), ``pooled`` (mean of the last feature map) or
            ``both``.
        probe_c: inverse L2 strength of the probes.
        folds: k of the out-of-fold training predictions the probe's thresholds are chosen on.
        beta: thresholds maximise F-beta on the training split (``< 1``: fewer, surer findings).
        normal_share: the normal gate: volumes whose probability of a normal report (a probe on the same
            features) is above its ``1 - normal_share`` quantile get no findings at all (0: off).
        operating_point_on: where the label thresholds and the gate's quantile are taken: ``train``
            (out-of-fold scores of the training volumes) or ``calibration`` (volumes the CT encoder never
            saw, :class:`ctxray.generate.tune.Calibration`: the encoder is surer of its own training volumes
            than of new ones, so training thresholds plan too many findings on new volumes and a training
            quantile passes fewer of them as normal than asked).
        wording: ``neighbours`` (prefer the sentences of the nearest training volumes) or ``frequent``
            (the most frequent training sentence that states the planned finding).
        neighbours: training volumes whose sentences are preferred, nearest first.
        sided_min_rate: a label is sided when at least this share of its training mentions names a side.
        side_features: what the side probe reads: ``thirds`` (the left and right thirds of the last feature map)
            or ``swap`` (for each label, the drop of its own score when one half of the volume is replaced by the
            mirror image of the other half, :func:`swap_halves`: two numbers per label, from the whole model;
            costs two more encoder passes per volume) or ``hemithorax`` (the intensity quantiles of the input's
            left and right thirds, anterior and posterior halves apart, :func:`hemithorax_quantiles`: read from
            the scan, not the encoder; the control for an encoder whose features do not say where).
        seed: seeds the probes' folds and solver.
        label_set: the labeler's label set.
        train_split: manifest split the planner and the sentence bank are built from.
    """

    planner: Literal["probe", "zeroshot"] = "probe"
    probe_features: Literal["embedding", "pooled", "both"] = "embedding"
    probe_c: float = 0.1
    folds: int = 5
    beta: float = 1.0
    normal_share: float = 0.0
    operating_point_on: Literal["train", "calibration"] = "train"
    wording: Literal["neighbours", "frequent"] = "neighbours"
    neighbours: int = 10
    sided_min_rate: float = 0.5
    side_features: Literal["thirds", "swap", "hemithorax"] = "thirds"
    seed: int = 0
    label_set: Literal["ct"] = "ct"
    train_split: str = "train"


HEMI_QUANTILES = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95)


def hemithorax_quantiles(x: torch.Tensor, quantiles: Sequence[float] = HEMI_QUANTILES) -> torch.Tensor:
    """Intensity quantiles of the low and high thirds of the last (left-right) axis, each split into the two
    halves of the anterior-posterior axis: what one side holds that the other does not (fluid lies posterior,
    a consolidation is denser than lung).

    Shape:
        x (B, 1, D, H, W) -> (B, 2 * 2 * Q): the low third's [first half, second half] quantiles, then the high's
    """
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"hemithorax_quantiles: expected (B, 1, D, H, W), got {tuple(x.shape)}")
    w, h = x.shape[-1], x.shape[-2]
    third, half = max(1, w // 3), max(1, h // 2)
    q = torch.tensor(quantiles, dtype=torch.float32, device=x.device)
    out = []
    for cols in (slice(0, third), slice(w - third, w)):
        for rows in (slice(0, half), slice(h - half, h)):
            part = x[:, 0, :, rows, cols].float().reshape(x.shape[0], -1)
            out.append(torch.quantile(part, q, dim=1).T)  # (B, Q)
    return torch.cat(out, dim=1)


def swap_halves(x: torch.Tensor, half: Literal["low", "high"]) -> torch.Tensor:
    """The volume with one half of its last (left-right) axis replaced by the mirror image of the other half.

    A finding on the replaced side is gone (unless it is on both sides); one on the kept side is doubled.

    Shape:
        x (..., W) -> (..., W)
    """
    w = x.shape[-1]
    h = w // 2
    out = x.clone()
    if half == "low":
        out[..., :h] = torch.flip(x[..., w - h:], dims=[-1])
    else:
        out[..., w - h:] = torch.flip(x[..., :h], dims=[-1])
    return out


SWAPS = ("swap_low", "swap_high")


class VolumeView(nn.Module):
    """The frozen volume tower of a dual encoder: feature map, pooled vector and joint-space embedding.

    Args:
        swap: also the embeddings and pooled vectors of the two half-swapped volumes (:func:`swap_halves`), as
            ``swap_low.embedding``, ``swap_low.pooled``, ``swap_high.*`` (``PlannedConfig.side_features="swap"``).
        hemithorax: also ``hemithorax``, the intensity quantiles of the input's left and right thirds
            (:func:`hemithorax_quantiles`, ``side_features="hemithorax"``; a sort of every voxel, so only on request).
    """

    def __init__(self, encoder: nn.Module, proj: nn.Module, swap: bool = False, hemithorax: bool = False) -> None:
        super().__init__()
        self.encoder, self.proj, self.swap, self.hemithorax = encoder, proj, swap, hemithorax

    @torch.no_grad()
    def features(self, x: torch.Tensor, swap: bool | None = None) -> dict[str, torch.Tensor]:
        """Shape: x (B, 1, D, H, W) -> embedding (B, E), pooled (B, C), sides (B, 2C): left then right third;
        with the view's ``hemithorax`` also hemithorax (B, 4Q); with ``swap`` (default: the view's) also
        ``swap_low.*`` and ``swap_high.*`` (embedding, pooled)."""
        out = self._features(x)
        if self.hemithorax:
            out["hemithorax"] = hemithorax_quantiles(x)
        if self.swap if swap is None else swap:
            for name, half in zip(SWAPS, ("low", "high")):
                f = self._features(swap_halves(x, half))  # type: ignore[arg-type]
                out.update({f"{name}.{k}": f[k] for k in ("embedding", "pooled")})
        return out

    def _features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        fmap = self.encoder.feature_map(x).float()  # (B, C, d, h, w)
        w = fmap.shape[-1]
        third = max(1, w // 3)
        cols = fmap.mean(dim=(2, 3))  # (B, C, w)
        low, high = cols[..., :third].mean(-1), cols[..., w - third:].mean(-1)
        emb = nn.functional.normalize(self.proj(self.encoder(x).float()), dim=-1)
        return {"embedding": emb, "pooled": fmap.mean(dim=(2, 3, 4)), "sides": torch.cat([low, high], dim=1)}


def encode_volumes(view: VolumeView, loaders: Sequence[Callable[[], torch.Tensor]], batch_size: int = 4,
                   flip: bool = False) -> Features:
    """Features of many volumes (``flip``: of their left-right mirror images, last axis reversed).

    Returns:
        ``embedding`` (N, E), ``pooled`` (N, C), ``sides`` (N, 2C) (+ ``hemithorax`` (N, 4Q) and the swapped
        volumes' features where the view computes them), float32 numpy.
    """
    device = next(iter(view.parameters()), torch.empty(0)).device
    parts: dict[str, list[np.ndarray]] = {}
    view.eval()
    for start in progress(range(0, len(loaders), batch_size), desc="features", unit="batch"):
        x = torch.cat([load() for load in loaders[start:start + batch_size]]).to(device)
        if flip:  # the mirror images feed the thirds side probe only: no half-swapped copies of them
            x = torch.flip(x, dims=[-1])
        for k, v in view.features(x, swap=False if flip else None).items():
            parts.setdefault(k, []).append(v.cpu().numpy().astype(np.float32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def probe_input(feats: Features, kind: str) -> np.ndarray:
    if kind == "both":
        return np.concatenate([feats["embedding"], feats["pooled"]], axis=1)
    return feats[kind]


def sided_labels(plans: Sequence[Plan], names: Sequence[str], min_rate: float) -> list[str]:
    """Labels whose training mentions name a side at least ``min_rate`` of the time."""
    out = []
    for n in names:
        sides = [p.sides.get(n) for p in plans if n in p.labels]
        if sides and sum(s is not None for s in sides) / len(sides) >= min_rate:
            out.append(n)
    return out


@dataclass
class PlannedGenerator:
    """A fitted planned generator (see the module docstring)."""

    cfg: PlannedConfig
    names: list[str]
    sided: list[str]
    thresholds: np.ndarray  # (L,)
    probe: LabelProbe | None
    prompts: tuple[np.ndarray, np.ndarray, float] | None  # zero-shot (pos (L, E), neg (L, E), scale)
    sides: SideProbe
    train_embedding: np.ndarray  # (N_train, E), for the nearest-neighbour sentences
    bank: SentenceBank
    gate: LabelProbe | None = None  # P(normal report); volumes above gate_threshold get no findings
    gate_threshold: float = float("inf")
    train_oof: np.ndarray | None = None  # (N_train, L) out-of-fold training scores (after fitting only)
    train_gate_oof: np.ndarray | None = None  # (N_train,) out-of-fold P(normal)

    def scores(self, feats: Features) -> np.ndarray:
        """Per-label scores (probabilities) of volumes. Shape: -> (N, L)."""
        if self.cfg.planner == "probe":
            return self.probe.scores(probe_input(feats, self.cfg.probe_features))
        pos, neg, scale = self.prompts
        logits = scale * (feats["embedding"] @ pos.T - feats["embedding"] @ neg.T)
        return 1.0 / (1.0 + np.exp(-logits))

    def p_normal(self, feats: Features) -> np.ndarray:
        """The gate's probability that a volume's report is normal. Shape: -> (N,)."""
        if self.gate is None:
            raise RuntimeError("this planned generator has no normal gate")
        return self.gate.scores(probe_input(feats, self.cfg.probe_features))[:, 0]

    def side_inputs(self, feats: Features) -> np.ndarray:
        """What the side probe reads (``PlannedConfig.side_features``).

        Shape:
            thirds: (N, 2C), ``feats["sides"]``; hemithorax: (N, 4Q), ``feats["hemithorax"]``; swap: (N, L, 2),
            each label's score drop in log-odds when the low / high half of the volume is replaced by the other's
            mirror image
        """
        if self.cfg.side_features in ("thirds", "hemithorax"):
            key = "sides" if self.cfg.side_features == "thirds" else "hemithorax"
            if key not in feats:
                raise ValueError(f"side_features={self.cfg.side_features!r} needs features[{key!r}] "
                                 "(VolumeView(..., hemithorax=True))")
            return feats[key]
        missing = [f"{name}.embedding" for name in SWAPS if f"{name}.embedding" not in feats]
        if missing:
            raise ValueError(f"side_features='swap' needs {missing} (VolumeView(..., swap=True))")

        def log_odds(f: Features) -> np.ndarray:
            p = np.clip(self.scores(f), 1e-6, 1 - 1e-6)
            return np.log(p / (1 - p))

        base = log_odds(feats)
        drops = [base - log_odds({"embedding": feats[f"{name}.embedding"], "pooled": feats[f"{name}.pooled"]})
                 for name in SWAPS]
        return np.stack(drops, axis=-1)

    def side_agreement(self, feats: Features, truths: Sequence[Mapping]) -> dict:
        """The side probe alone, with the findings taken as known: for every sided label that a volume's
        ``ground_truth.jsonl`` record puts on a side, whether the probe's side set matches. Unlike the laterality
        of the written reports, this does not depend on which findings the plan states.

        Returns:
            ``{"n": pairs, "exact": share, "prior_exact": the same for the training reports' side rates alone (the
            baseline: "bilateral" where both sides are named at least half the time, else the commoner side),
            "per_label": {label: {"n", "hits", "prior_hits"}}}`` (shares NaN when n is 0)
        """
        if len(truths) != len(feats["embedding"]):
            raise ValueError(f"{len(feats['embedding'])} volumes but {len(truths)} ground-truth records")

        x = self.side_inputs(feats)
        per: dict[str, list[tuple[bool, bool]]] = {}
        for i, record in enumerate(truths):
            for label, true in truth_sides(record).items():
                if label in self.sided:
                    j = self.names.index(label)
                    got, prior = side_set(self.sides.side(x[i], j)), side_set(self.sides.prior_side(j))
                    per.setdefault(label, []).append((got == true, prior == true))
        return side_hits_summary(per)

    def plan(self, feats: Features) -> list[Plan]:
        scores = self.scores(feats)
        if self.gate is not None:
            normal = self.p_normal(feats) >= self.gate_threshold
            scores = np.where(normal[:, None], -np.inf, scores)
        return plans_from_scores(scores, self.thresholds, self.names, self.side_inputs(feats), self.sides, self.sided)

    def neighbours(self, feats: Features) -> np.ndarray:
        """Training report indices, nearest first. Shape: -> (N, k)."""
        if self.cfg.wording == "frequent":
            return np.zeros((len(feats["embedding"]), 0), dtype=np.int64)
        sim = feats["embedding"] @ self.train_embedding.T
        return np.argsort(-sim, axis=1, kind="stable")[:, : self.cfg.neighbours]

    def write(self, plans: Sequence[Plan], neighbours: np.ndarray | None = None) -> list[tuple[str, str]]:
        """(Findings, Impression) per plan."""
        rows = neighbours if neighbours is not None else [()] * len(plans)
        return [self.bank.realise(p, nb) for p, nb in zip(plans, rows)]

    def generate(self, feats: Features) -> list[tuple[str, str]]:
        return self.write(self.plan(feats), self.neighbours(feats))


def fit_planned(train_feats: Features, train_flipped: Features, findings: Sequence[str],
                impressions: Sequence[str], skeleton: tuple[str, str], cfg: PlannedConfig,
                prompts: tuple[np.ndarray, np.ndarray, float] | None = None,
                groups: Sequence[str] | None = None) -> PlannedGenerator:
    """Fit the planner on the training split and build the sentence bank.

    Args:
        train_feats, train_flipped: :func:`encode_volumes` of the training volumes and of their mirror images.
        findings, impressions: the training reports' sections (the labels, sides and sentences).
        skeleton: the report to edit (the most common training report).
        prompts: zero-shot prompt embeddings and scale (needed for ``planner="zeroshot"``).
        groups: scan ids, so the out-of-fold split keeps a scan's reconstructions together.
    """
    names = label_names(cfg.label_set)
    plans = plans_from_reports([report_text(f, i) for f, i in zip(findings, impressions)], cfg.label_set)
    y = plan_matrix(plans, names)
    sided = sided_labels(plans, names, cfg.sided_min_rate)
    probe = None
    if cfg.planner == "probe":
        x = probe_input(train_feats, cfg.probe_features)
        probe = LabelProbe(cfg.probe_c, cfg.seed)
        oof = probe.out_of_fold(x, y, cfg.folds, groups)
        thresholds = f1_thresholds(y, oof, cfg.beta)
        probe.fit(x, y)
    elif cfg.planner == "zeroshot":
        if prompts is None:
            raise ValueError("planner='zeroshot' needs the prompt embeddings")
        gen0 = PlannedGenerator(cfg, names, sided, np.zeros(len(names)), None, prompts, SideProbe(), np.zeros((0, 1)),
                                None)  # type: ignore[arg-type]
        oof = gen0.scores(train_feats)
        thresholds = f1_thresholds(y, oof, cfg.beta)
    else:
        raise ValueError(f"PlannedConfig.planner={cfg.planner!r}: expected 'probe' or 'zeroshot'")
    bank = SentenceBank(findings, impressions, skeleton, cfg.label_set)
    log.info("planned generator: %d training reports, sided labels %s", len(findings), sided)
    gen = PlannedGenerator(cfg, names, sided, thresholds, probe, prompts, SideProbe(c=cfg.probe_c, seed=cfg.seed),
                           train_feats["embedding"].astype(np.float32), bank)
    side_x = gen.side_inputs(train_feats)  # swap: the drops of the fitted probe's own scores
    side_flipped = side_x[..., ::-1] if cfg.side_features == "swap" else gen.side_inputs(train_flipped)
    gen.sides.fit(side_x, side_flipped, side_targets(plans, names))
    gen.train_oof = oof
    x = probe_input(train_feats, cfg.probe_features)
    normal = (y.sum(1) == 0).astype(np.float32)[:, None]
    gate = LabelProbe(cfg.probe_c, cfg.seed)
    gen.train_gate_oof = gate.out_of_fold(x, normal, cfg.folds, groups)[:, 0]
    gen.gate = gate.fit(x, normal)
    gen.gate_threshold = gate_threshold(gen.train_gate_oof, cfg.normal_share)
    return gen


def gate_threshold(p_normal: np.ndarray, share: float) -> float:
    """The P(normal) above which a volume is planned normal: the ``1 - share`` quantile (``inf`` when 0)."""
    if share <= 0:
        return float("inf")
    return float(np.quantile(p_normal, 1.0 - share))


def save_planned(out: str | Path, gen: PlannedGenerator, view: VolumeView, encoder_desc: dict,
                 train_sections: tuple[Sequence[str], Sequence[str]], skeleton: tuple[str, str],
                 spec_path: Path | None) -> None:
    """Write the generator folder (see the module docstring)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {f"encoder.{k}": v for k, v in view.encoder.state_dict().items()}
    state.update({f"proj.{k}": v for k, v in view.proj.state_dict().items()})
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / "encoder.safetensors"))
    arrays = {"train_embedding": gen.train_embedding}
    if gen.probe is not None:
        arrays.update({f"probe.{k}": v for k, v in gen.probe.state().items()})
    if gen.prompts is not None:
        arrays.update({"prompts.pos": gen.prompts[0], "prompts.neg": gen.prompts[1],
                       "prompts.scale": np.array([gen.prompts[2]])})
    arrays.update({f"sides.{k}": v for k, v in gen.sides.state().items()})
    if gen.gate is not None:
        arrays.update({f"gate.{k}": v for k, v in gen.gate.state().items()})
        arrays["gate.threshold"] = np.array([gen.gate_threshold])
    save_np({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}, str(out / "planner.safetensors"))
    bank = {"findings": list(train_sections[0]), "impressions": list(train_sections[1]), "skeleton": list(skeleton)}
    atomic_write_text(out / "bank.json", json.dumps(bank))
    if spec_path is not None and Path(spec_path).is_file():
        shutil.copyfile(spec_path, out / "spec.json")
    config = {"kind": "planned", "planned": to_dict(gen.cfg), "encoder": encoder_desc, "labels": gen.names,
              "sided": gen.sided, "thresholds": [float(t) if np.isfinite(t) else None for t in gen.thresholds]}
    atomic_write_text(out / "config.json", json.dumps(config, indent=2, sort_keys=True))


def is_planned(folder: str | Path) -> bool:
    """Whether a generator folder holds a planned generator (else a learnt decoder)."""
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text()).get("kind") == "planned"
    except (OSError, json.JSONDecodeError):
        return False


def load_planned(folder: str | Path, device: str = "cpu") -> tuple[PlannedGenerator, VolumeView, Path | None]:
    """Rebuild a planned generator folder: (generator, frozen volume view, spec path or None).

    Raises:
        FileNotFoundError / ValueError: a file is missing or does not fit (the message names it).
    """
    root = Path(folder)
    for name in ("config.json", "encoder.safetensors", "planner.safetensors", "bank.json"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name}: missing; is {root} a planned generator folder?")
    try:
        data = json.loads((root / "config.json").read_text())
        cfg = from_dict(PlannedConfig, data["planned"], f"{root / 'config.json'}:planned")
        desc, names, sided = data["encoder"], list(data["labels"]), list(data["sided"])
        thresholds = np.array([np.inf if t is None else float(t) for t in data["thresholds"]])
        bank_data = json.loads((root / "bank.json").read_text())
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{root}: not a planned generator folder: {err}") from err
    state = load_file(str(root / "encoder.safetensors"))
    encoder = create_volume_encoder(desc["name"], **desc["kwargs"])
    enc_state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    proj_w = state["proj.weight"]
    proj = nn.Linear(proj_w.shape[1], proj_w.shape[0], bias="proj.bias" in state)
    try:
        encoder.load_state_dict(enc_state)
        proj.load_state_dict({k[len("proj."):]: v for k, v in state.items() if k.startswith("proj.")})
    except RuntimeError as err:
        raise ValueError(f"{root / 'encoder.safetensors'}: does not fit encoder {desc['name']!r}: {err}") from err
    view = VolumeView(freeze(encoder), freeze(proj), swap=cfg.side_features == "swap",
                      hemithorax=cfg.side_features == "hemithorax").to(device)
    arrays = load_np(str(root / "planner.safetensors"))
    probe = None
    if any(k.startswith("probe.") for k in arrays):
        probe = LabelProbe.from_state({k[6:]: v for k, v in arrays.items() if k.startswith("probe.")},
                                      cfg.probe_c, cfg.seed)
    prompts = None
    if "prompts.pos" in arrays:
        prompts = (arrays["prompts.pos"], arrays["prompts.neg"], float(arrays["prompts.scale"][0]))
    sides = SideProbe.from_state({k[6:]: v for k, v in arrays.items() if k.startswith("sides.")}, c=cfg.probe_c,
                                 seed=cfg.seed)
    bank = SentenceBank(bank_data["findings"], bank_data["impressions"], tuple(bank_data["skeleton"]), cfg.label_set)
    gen = PlannedGenerator(cfg, names, sided, thresholds, probe, prompts, sides, arrays["train_embedding"], bank)
    if "gate.coef" in arrays:
        gen.gate = LabelProbe.from_state({k: arrays[f"gate.{k}"] for k in ("mean", "std", "coef", "bias")},
                                         cfg.probe_c, cfg.seed)
        gen.gate_threshold = float(arrays["gate.threshold"][0])
    spec = root / "spec.json"
    return gen, view, spec if spec.is_file() else None
