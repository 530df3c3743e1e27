"""Findings-first planning: which findings (and on which side) a generated report will state.

A *plan* is a set of positive labels, each with a side where the label has one. Planners:

- ``probe``: one logistic regression per label on the frozen encoder's features of the training volumes
  (labels from the training reports); the decision threshold of each label maximises F1 on
  *out-of-fold* training predictions (k-fold on the training split), never on validation data.
- ``zeroshot``: the dual encoder's zero-shot probabilities (positive vs negative prompts); thresholds
  maximise F1 on the training split (nothing is fitted, so no folds are needed).
- ``oracle``: the reference report's own findings and sides (the ceiling; needs the reference).
- ``shuffled``: another volume's plan (a permutation of the planned rows; the control: same number and
  mix of findings, no link to the image).
- ``normal``: no findings (what the always-normal template says).

Sides come from :class:`SideProbe`: for each label with a side, two logistic regressions (left
involved, right involved) on the left and right thirds of the encoder's last feature map, trained on the
training volumes whose report states the label with a side, with left-right flipped volumes added
(flipping swaps the targets).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ctxray.labeler import find_mentions, label_names

log = logging.getLogger(__name__)

SIDES = ("left", "right")


@dataclass(frozen=True)
class Plan:
    """What one report will state.

    Args:
        labels: positive labels, in label-set order.
        sides: label -> ``"left"``, ``"right"``, ``"bilateral"`` or None (no side stated).
    """

    labels: tuple[str, ...] = ()
    sides: dict[str, str | None] = field(default_factory=dict)

    def side_set(self, label: str) -> frozenset[str | None]:
        """The sides to state for ``label``: {left}, {right}, {left, right} or {None}."""
        return side_set(self.sides.get(label))

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "sides": {k: self.sides.get(k) for k in self.labels}}


def side_set(side: str | None) -> frozenset[str | None]:
    """A side word as the set of sides it names: {left}, {right}, {left, right} ("bilateral") or {None}."""
    return frozenset(SIDES) if side == "bilateral" else frozenset([side])


def side_of(sides: set[str | None]) -> str | None:
    """One side word for a set of mention sides (None when no side was named)."""
    named = {s for s in sides if s is not None}
    if "bilateral" in named or set(SIDES) <= named:
        return "bilateral"
    return next(iter(named), None)


def plans_from_reports(texts: Sequence[str], label_set: str = "ct") -> list[Plan]:
    """The findings and sides each report states (the labeler's positive and hedged mentions)."""
    names = label_names(label_set)
    out = []
    for text in texts:
        found: dict[str, set[str | None]] = {}
        for m in find_mentions(text, label_set):
            if m.status != "negative":
                found.setdefault(m.label, set()).add(m.laterality)
        labels = tuple(n for n in names if n in found)
        out.append(Plan(labels, {n: side_of(found[n]) for n in labels}))
    return out


def plan_matrix(plans: Sequence[Plan], names: Sequence[str]) -> np.ndarray:
    """(N, L) 0/1 matrix of planned labels."""
    index = {n: j for j, n in enumerate(names)}
    y = np.zeros((len(plans), len(names)), dtype=np.float32)
    for i, p in enumerate(plans):
        for label in p.labels:
            y[i, index[label]] = 1.0
    return y


def f1_thresholds(y: np.ndarray, scores: np.ndarray, beta: float = 1.0) -> np.ndarray:
    """Per label, the score threshold that maximises F-beta (``score >= t`` is positive).

    ``beta < 1`` weighs precision more (fewer, surer findings). A label without positives gets ``inf``
    (never planned). Ties go to the higher threshold.

    Shape:
        y, scores: (N, L) -> (L,)
    """
    y, scores = np.asarray(y) >= 0.5, np.asarray(scores, dtype=np.float64)
    out = np.full(y.shape[1], np.inf)
    for j in range(y.shape[1]):
        n_pos = int(y[:, j].sum())
        if n_pos == 0:
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        s, t = scores[order, j], y[order, j]
        tp = np.cumsum(t)
        k = np.arange(1, len(s) + 1)
        b2 = float(beta) ** 2
        f1 = (1 + b2) * tp / (k + b2 * n_pos)
        last = np.r_[s[1:] != s[:-1], True]  # only cut between distinct scores
        f1 = np.where(last, f1, -1.0)
        best = int(np.argmax(f1))
        out[j] = s[best]
    return out


def fold_ids(n: int, folds: int, seed: int, groups: Sequence[str] | None = None) -> np.ndarray:
    """A seeded fold index per row; rows of one group (patient) share a fold. Shape: -> (n,)"""
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    uniq = sorted(set(keys))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[i]: int(perm[i] % folds) for i in range(len(uniq))}
    return np.array([fold_of[k] for k in keys])


class LabelProbe:
    """Per-label logistic regressions on standardised features.

    Args:
        c: inverse L2 strength (scikit-learn's ``C``).
        seed: seeds the solver and the out-of-fold split.
    """

    def __init__(self, c: float = 0.1, seed: int = 0) -> None:
        self.c, self.seed = float(c), int(seed)
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.coef: np.ndarray | None = None  # (L, F)
        self.bias: np.ndarray | None = None  # (L,)

    def _fit_one(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        from sklearn.linear_model import LogisticRegression

        if y.min() == y.max():  # one class: a constant score at the prior
            p = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
            return np.zeros(x.shape[1]), float(np.log(p / (1 - p)))
        lr = LogisticRegression(C=self.c, max_iter=2000, random_state=self.seed)
        lr.fit(x, y)
        return lr.coef_[0].astype(np.float64), float(lr.intercept_[0])

    def fit(self, x: np.ndarray, y: np.ndarray) -> LabelProbe:
        """Shape: x (N, F), y (N, L) 0/1."""
        x = np.asarray(x, dtype=np.float64)
        self.mean, self.std = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean) / self.std
        fits = [self._fit_one(z, (np.asarray(y)[:, j] >= 0.5).astype(int)) for j in range(y.shape[1])]
        self.coef = np.stack([f[0] for f in fits])
        self.bias = np.array([f[1] for f in fits])
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Probabilities. Shape: (N, F) -> (N, L)."""
        if self.coef is None:
            raise RuntimeError("LabelProbe: call fit first")
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        return 1.0 / (1.0 + np.exp(-(z @ self.coef.T + self.bias)))

    def out_of_fold(self, x: np.ndarray, y: np.ndarray, folds: int = 5,
                    groups: Sequence[str] | None = None) -> np.ndarray:
        """Scores of each training row from a probe fitted without its fold (rows of one group stay together).

        Shape: x (N, F), y (N, L) -> (N, L)
        """
        fold = fold_ids(len(x), folds, self.seed, groups)
        out = np.zeros(np.asarray(y).shape)
        for f in range(folds):
            test = fold == f
            if not test.any():
                continue
            probe = LabelProbe(self.c, self.seed).fit(x[~test], np.asarray(y)[~test])
            out[test] = probe.scores(x[test])
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "coef": self.coef, "bias": self.bias}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], c: float = 0.1, seed: int = 0) -> LabelProbe:
        probe = cls(c, seed)
        probe.mean, probe.std, probe.coef, probe.bias = (np.asarray(state[k], dtype=np.float64)
                                                         for k in ("mean", "std", "coef", "bias"))
        return probe


def side_targets(plans: Sequence[Plan], names: Sequence[str]) -> np.ndarray:
    """Left/right involvement per label from report plans; NaN where the report names no side.

    Shape:
        -> (N, L, 2): [..., 0] left involved, [..., 1] right involved
    """
    out = np.full((len(plans), len(names), 2), np.nan)
    for i, p in enumerate(plans):
        for j, n in enumerate(names):
            if n in p.labels and p.sides.get(n) is not None:
                s = p.side_set(n)
                out[i, j] = [float("left" in s), float("right" in s)]
    return out


def side_word(p: np.ndarray) -> str:
    """(left, right) involvement probabilities -> "bilateral" where both reach 0.5, else the likelier side."""
    return "bilateral" if (np.asarray(p) >= 0.5).all() else SIDES[int(np.argmax(p))]


class SideProbe:
    """Which side(s) a finding is on, from the left and right thirds of the feature map.

    Args:
        min_examples: labels with fewer sided training reports use the training majority side.
        c, seed: as :class:`LabelProbe`.
    """

    def __init__(self, min_examples: int = 8, c: float = 0.1, seed: int = 0) -> None:
        self.min_examples, self.c, self.seed = int(min_examples), float(c), int(seed)
        self.probes: dict[int, LabelProbe] = {}
        self.prior: np.ndarray | None = None  # (L, 2) training rate of left / right involvement

    def fit(self, x: np.ndarray, x_flipped: np.ndarray, targets: np.ndarray) -> SideProbe:
        """Shape: x, x_flipped (N, F) features of the volumes and of their mirror images, or (N, L, F) features per
        label (label ``j`` reads ``x[:, j]``); targets (N, L, 2)."""
        known = (~np.isnan(targets)).sum(0)
        self.prior = np.where(known > 0, np.nansum(targets, axis=0) / np.maximum(known, 1), 0.5)  # (L, 2)
        for j in range(targets.shape[1]):
            rows = ~np.isnan(targets[:, j, 0])
            if rows.sum() < self.min_examples:
                continue
            t = targets[rows, j]
            xj, fj = (x[rows, j], x_flipped[rows, j]) if x.ndim == 3 else (x[rows], x_flipped[rows])
            xx = np.concatenate([xj, fj])
            yy = np.concatenate([t, t[:, ::-1]])  # a mirror image has the sides swapped
            self.probes[j] = LabelProbe(self.c, self.seed).fit(xx, yy)
        return self

    def side(self, x: np.ndarray, j: int) -> str | None:
        """The side word for label ``j`` of one volume (None if the label was never given a side).

        Shape: x (F,) or (L, F) (per-label features, as in :meth:`fit`)."""
        if self.prior is None:
            raise RuntimeError("SideProbe: call fit first")
        if j in self.probes:
            return self._word(self.probes[j].scores((x[j] if x.ndim == 2 else x)[None])[0], j)
        return self.prior_side(j)

    def prior_side(self, j: int) -> str | None:
        """The side word of label ``j`` from the training reports' side rates alone (the baseline of
        :meth:`side`: "bilateral" where both sides are named at least half the time, else the commoner side)."""
        if self.prior is None:
            raise RuntimeError("SideProbe: call fit first")
        return self._word(self.prior[j], j)

    def _word(self, p: np.ndarray, j: int) -> str | None:
        """(left, right) involvement probabilities -> a side word (None if label ``j`` was never given a side)."""
        if not np.isfinite(p).all() or (self.prior[j] == 0).all():
            return None
        return side_word(p)

    def state(self) -> dict[str, np.ndarray]:
        out = {"prior": self.prior}
        for j, probe in self.probes.items():
            out.update({f"{j}.{k}": v for k, v in probe.state().items()})
        return out

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], min_examples: int = 8, c: float = 0.1,
                   seed: int = 0) -> SideProbe:
        sp = cls(min_examples, c, seed)
        sp.prior = np.asarray(state["prior"], dtype=np.float64)
        for j in sorted({int(k.split(".")[0]) for k in state if k != "prior"}):
            sp.probes[j] = LabelProbe.from_state({k: state[f"{j}.{k}"] for k in ("mean", "std", "coef", "bias")},
                                                 c, seed)
        return sp


def plans_from_scores(scores: np.ndarray, thresholds: np.ndarray, names: Sequence[str],
                      side_features: np.ndarray | None = None, sides: SideProbe | None = None,
                      sided: Sequence[str] = ()) -> list[Plan]:
    """Plans from label scores: positive where ``score >= threshold``; sides from ``sides`` for ``sided`` labels.

    Shape:
        scores: (N, L); thresholds: (L,); side_features: (N, F) or (N, L, F) (:meth:`SideProbe.fit`)
    """
    decided = np.asarray(scores) >= np.asarray(thresholds)[None]
    out = []
    for i, row in enumerate(decided):
        labels = tuple(n for n, d in zip(names, row) if d)
        side_map: dict[str, str | None] = {}
        for n in labels:
            j = list(names).index(n)
            side_map[n] = sides.side(side_features[i], j) if (sides is not None and n in sided) else None
        out.append(Plan(labels, side_map))
    return out


def shuffled_plans(plans: Sequence[Plan], seed: int) -> list[Plan]:
    """The control: each volume gets another volume's plan (a seeded permutation)."""
    perm = np.random.default_rng(seed).permutation(len(plans))
    return [plans[int(k)] for k in perm]
