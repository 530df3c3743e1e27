"""Text for a findings plan, built from the training reports' own sentences (retrieval-augmented).

:class:`SentenceBank` holds every sentence of the training reports with what the labeler reads in it
(positive/hedged labels, negated labels, the side named for each). A report for a :class:`Plan` is
written by editing the *skeleton*, the training set's most common report (the normal template):

1. Each skeleton sentence that negates a planned finding is replaced by training sentences that state
   it, on the planned side; other skeleton sentences stay (they state the normal findings).
2. A planned finding that no skeleton sentence negates is inserted where training reports state it.
3. The Impression lists training impression sentences for the planned findings (the skeleton's
   impression when the plan is empty).

Inserted sentences (and sentences sharing a replaced skeleton sentence's slot) are ordered by their
labels' usual place in the training reports, so every report lists findings in the same order.

A candidate sentence may only state planned findings and may negate none of them, so a report never
states a finding and its negation. Candidates come first from the reports of the nearest training
volumes (in the encoder's embedding), then from the whole bank by frequency, so the wording (sizes,
locations, phrasing) follows similar scans.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ctxray.generate.plan import Plan, side_of, side_set
from ctxray.labeler import find_mentions

log = logging.getLogger(__name__)

_SPLIT = re.compile(r"(?<=[.;!?])\s+(?=[A-Z0-9(])")


def sentences_of(text: str) -> list[str]:
    """Sentences of a report section as written (case kept), split after ``. ; ! ?`` before a capital."""
    text = " ".join(str(text or "").split())
    return [s.strip() for s in _SPLIT.split(text) if s.strip()]


@dataclass(frozen=True)
class Sentence:
    """One training sentence and what the labeler reads in it.

    Args:
        text: as written.
        section: ``findings`` or ``impression``.
        pos: labels stated positive or hedged.
        neg: labels negated.
        sides: label -> side word for labels in ``pos`` (None: no side named).
        position: index in its section / section length, in [0, 1).
    """

    text: str
    section: str
    pos: frozenset[str]
    neg: frozenset[str]
    sides: tuple[tuple[str, str | None], ...]
    position: float

    def side(self, label: str) -> str | None:
        return dict(self.sides).get(label)


def read_sentence(text: str, section: str, position: float, label_set: str = "ct") -> Sentence:
    pos: dict[str, set[str | None]] = {}
    neg: set[str] = set()
    for m in find_mentions(text, label_set):
        if m.status == "negative":
            neg.add(m.label)
        else:
            pos.setdefault(m.label, set()).add(m.laterality)
    sides = tuple(sorted((k, side_of(v)) for k, v in pos.items()))
    return Sentence(text, section, frozenset(pos), frozenset(neg - set(pos)), sides, position)


class SentenceBank:
    """The training reports, sentence by sentence.

    Args:
        findings, impressions: the training reports' sections (same length; '' when missing).
        skeleton: (findings, impression) of the report to edit (the most common training report).
        label_set: the labeler's label set.
    """

    def __init__(self, findings: Sequence[str], impressions: Sequence[str], skeleton: tuple[str, str],
                 label_set: str = "ct") -> None:
        if len(findings) != len(impressions):
            raise ValueError(f"SentenceBank: {len(findings)} findings but {len(impressions)} impressions")
        self.label_set = label_set
        cache: dict[tuple[str, str, int], Sentence] = {}

        def read(section: str, text: str) -> list[Sentence]:
            parts = sentences_of(text)
            out = []
            for k, s in enumerate(parts):
                key = (section, s, round(100 * k / len(parts)))
                if key not in cache:
                    cache[key] = read_sentence(s, section, k / len(parts), label_set)
                out.append(cache[key])
            return out

        self.reports: list[list[Sentence]] = [read("findings", f) + read("impression", i)
                                              for f, i in zip(findings, impressions)]
        self.frequency = Counter(s.text for rep in self.reports for s in rep)
        self.skeleton = read("findings", skeleton[0])
        self.skeleton_impression = skeleton[1]
        if any(s.pos for s in self.skeleton):
            log.warning("the skeleton report states findings %s; they are kept only if planned",
                        sorted(set().union(*(s.pos for s in self.skeleton))))
        # each distinct sentence once, most frequent first (the fallback order)
        seen: dict[tuple[str, str], Sentence] = {}
        for rep in self.reports:
            for s in rep:
                seen.setdefault((s.section, s.text), s)
        self.pool = sorted(seen.values(), key=lambda s: (-self.frequency[s.text], s.text))
        # each label's usual place in a section: the mean relative position of the training sentences stating it
        places: dict[tuple[str, str], list[float]] = {}
        for rep in self.reports:
            for s in rep:
                for lab in s.pos:
                    places.setdefault((s.section, lab), []).append(s.position)
        self.place = {k: sum(v) / len(v) for k, v in places.items()}

    def _place(self, s: Sentence) -> float:
        """Where a sentence goes in its section: the mean usual place of the labels it states.

        Sentences are ordered by their labels' usual places in the training reports, not by their place in
        the report they came from (which depends on how many findings that report had), so reports list
        findings in one consistent order, as the references do.
        """
        known = [self.place[(s.section, lab)] for lab in s.pos if (s.section, lab) in self.place]
        return sum(known) / len(known) if known else s.position

    def _candidates(self, section: str, neighbours: Sequence[int]) -> list[tuple[int, Sentence]]:
        """(rank, sentence): the neighbours' sentences by neighbour rank, then the pool by frequency."""
        out, seen = [], set()
        for rank, i in enumerate(neighbours):
            for s in self.reports[int(i)]:
                if s.section == section and s.pos and s.text not in seen:
                    seen.add(s.text)
                    out.append((rank, s))
        tail = len(neighbours)
        out += [(tail, s) for s in self.pool if s.section == section and s.pos and s.text not in seen]
        return out

    def _cover(self, want: dict[str, set[str | None]], plan: Plan, keep_neg: frozenset[str],
               cands: list[tuple[int, Sentence]]) -> list[Sentence]:
        """Greedy: sentences that state the wanted (label, side) pairs and nothing outside the plan."""
        planned = set(plan.labels)
        chosen: list[Sentence] = []
        while any(want.values()):
            best, best_key = None, None
            for rank, s in cands:
                if not s.pos <= planned or s.neg & planned or s in chosen:
                    continue
                if any(not (side_set(s.side(lab)) <= plan.side_set(lab)) for lab in s.pos):
                    continue  # names a side the plan does not have
                gain = sum(len(side_set(s.side(lab)) & want.get(lab, set())) for lab in s.pos)
                if gain == 0:
                    continue
                key = (-gain, -len(s.neg & keep_neg), rank, -self.frequency[s.text])
                if best_key is None or key < best_key:
                    best, best_key = s, key
            if best is None:
                best = self._any_side(want, planned, chosen, cands)
                if best is None:
                    break
                log.debug("no sentence states %s on the planned side; using %r", sorted(best.pos), best.text)
                for lab in best.pos & set(want):
                    want[lab].clear()
            chosen.append(best)
            for lab in best.pos:
                if lab in want:
                    want[lab] -= side_set(best.side(lab))
        return chosen

    def _any_side(self, want: dict[str, set[str | None]], planned: set[str], chosen: list[Sentence],
                  cands: list[tuple[int, Sentence]]) -> Sentence | None:
        """The fallback when no sentence names the planned side: the best one stating a wanted label at all."""
        best, best_key = None, None
        for rank, s in cands:
            if not s.pos <= planned or s.neg & planned or s in chosen:
                continue
            gain = sum(1 for lab in s.pos if want.get(lab))
            if gain and (best_key is None or (-gain, rank, -self.frequency[s.text]) < best_key):
                best, best_key = s, (-gain, rank, -self.frequency[s.text])
        return best

    def realise(self, plan: Plan, neighbours: Sequence[int] = ()) -> tuple[str, str]:
        """(Findings, Impression) stating exactly the plan.

        Args:
            plan: the findings (and sides) to state.
            neighbours: training report indices, nearest first (their sentences are preferred).
        """
        planned = set(plan.labels)
        want = {lab: set(plan.side_set(lab)) for lab in plan.labels}
        cands = self._candidates("findings", neighbours)
        body: list[tuple[float, str]] = []
        for k, s in enumerate(self.skeleton):
            pos = k / max(len(self.skeleton), 1)
            hit = (s.neg | s.pos) & planned
            if not hit and not s.pos:
                body.append((pos, s.text))
                continue
            if s.pos and not hit:  # a finding the plan does not have
                continue
            slot = {lab: want[lab] for lab in hit if want.get(lab)}
            for c in sorted(self._cover(slot, plan, s.neg - planned, cands), key=self._place):
                body.append((pos, c.text))
        left = {lab: sides for lab, sides in want.items() if sides}
        for c in self._cover(left, plan, frozenset(), cands):  # findings the skeleton never negates
            body.append((self._place(c), c.text))
        body.sort(key=lambda t: t[0])  # stable: skeleton order, inserted sentences by their usual place
        findings = " ".join(t for _, t in body)
        if not planned:
            return findings, self.skeleton_impression
        imp_want = {lab: set(plan.side_set(lab)) for lab in plan.labels}
        chosen = self._cover(imp_want, plan, frozenset(), self._candidates("impression", neighbours))
        chosen.sort(key=self._place)
        return findings, " ".join(c.text for c in chosen)
