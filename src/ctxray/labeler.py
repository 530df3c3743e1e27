"""Rule-based, negation- and uncertainty-aware radiology report labeler.

Reads a chest CT or X-ray report and says, for each label of a label set, whether the report
states it (``positive``), denies it (``negative``), hedges (``uncertain``) or does not mention it
(``absent``). All vocabulary and rules live in the packaged data file
``resources/labeler_rules.json`` (see its ``description``); this module only applies them:

1. lower-case, hyphens to spaces, split into sentences at ``. ; : ! ?``;
2. find cue phrases (pseudo-negations such as "no change" first, then the longest cue wins, so
   "cannot be excluded" is uncertainty and "is not seen" a post-negation, not the negation "not");
3. find label mentions (longest match wins; see the rules file for ``cooccurrence``/``ignore``);
4. a mention is negative/uncertain when a post-cue (or a two-way cue such as "versus") follows it
   within ``post_window_words`` and no comma or clause terminator ("but", "however", ...), or else
   when a pre-cue precedes it within ``pre_window_words`` and no terminator (a negation that
   governs a hedge in the same phrase, "no opacity to suggest pneumonia", negates); else positive;
5. per label: positive > uncertain > negative > absent over all its mentions.

Label sets: ``"ct"`` (the 18 CT-RATE labels, names from :mod:`ctxray.labels`) and ``"xray"``
(CheXpert-style; order in the rules file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from ctxray.labels import load_labels

LabelSetName = Literal["ct", "xray"]
Status = Literal["positive", "negative", "uncertain", "absent"]
STATUSES: tuple[str, ...] = ("positive", "uncertain", "negative", "absent")  # aggregation priority
_PRIORITY = {s: i for i, s in enumerate(STATUSES)}
_GAP = re.compile(r"\{gap:(\d+)\}\s*")
# cue kinds in tie-break order (equal-length cues): uncertainty before negation, post before pre
_CUE_KINDS = ("pseudo", "post_uncertainty", "bi_uncertainty", "pre_uncertainty", "post_negation", "pre_negation")
_SENTENCE_END = re.compile(r"([.;:!?])(?=\s|$)")
_WORD_SLASH = re.compile(r"(?<=[a-z]{2})/(?=[a-z])")


@dataclass(frozen=True)
class Mention:
    """One label mention in a report.

    Args:
        label: label name.
        status: "positive", "negative" or "uncertain".
        laterality: "left", "right", "bilateral" or None, from the words around the mention.
        sentence: the normalised sentence holding the mention.
        start: character offset of the mention in ``sentence``.
        end: end offset in ``sentence``.
    """

    label: str
    status: str
    laterality: str | None
    sentence: str
    start: int
    end: int

    @property
    def text(self) -> str:
        return self.sentence[self.start : self.end]


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern
    labels: tuple[str | None, ...]  # (None,) for an ignore phrase
    masking: bool
    status: str | None = None  # fixed status for statements


@dataclass(frozen=True)
class _SetRules:
    names: tuple[str, ...]
    patterns: tuple[_Pattern, ...]


@dataclass(frozen=True)
class LabelerRules:
    """Compiled labeler rules (see ``resources/labeler_rules.json``)."""

    sets: dict[str, _SetRules]
    cues: dict[str, tuple[re.Pattern, ...]]
    terminators: re.Pattern
    pre_window: int
    post_window: int
    laterality: tuple[tuple[str, re.Pattern], ...]
    mesh_mapping: dict[str, tuple[str, ...]]
    source: str


def _compile(pattern: str, gap_word: str, where: str) -> re.Pattern:
    body = _GAP.sub(lambda m: f"(?:{gap_word}\\s+){{0,{int(m.group(1))}}}?", pattern)
    try:
        return re.compile(rf"(?<![\w/])(?:{body})(?![\w/])")
    except re.error as err:
        raise ValueError(f"{where}: bad pattern {pattern!r}: {err}") from err


def _compile_set(name: str, data: dict, gap: str, source: str) -> _SetRules:
    where = f"{source}: label_sets.{name}"
    labels = data.get("labels") or {}
    if name == "ct":
        names = tuple(load_labels().names)
    else:
        names = tuple(data.get("order") or labels)
    missing = [n for n in names if n not in labels]
    extra = [n for n in labels if n not in names]
    if missing or extra:
        raise ValueError(f"{where}: labels without rules {missing}, rules for unknown labels {extra}")
    pats = [_Pattern(_compile(p, gap, where), (None,), True) for p in data.get("ignore", [])]
    for label in names:
        entry = labels[label]
        if not entry.get("patterns"):
            raise ValueError(f"{where}.labels.{label}: no patterns")
        pats += [_Pattern(_compile(p, gap, where), (label,), True) for p in entry["patterns"]]
        pats += [_Pattern(_compile(p, gap, where), (label,), False) for p in entry.get("cooccurrence", [])]
    for st in data.get("statements", []):
        bad = [lab for lab in st.get("labels", []) if lab not in names]
        if bad or st.get("status") not in ("positive", "negative", "uncertain"):
            raise ValueError(f"{where}.statements: bad statement {st!r} (labels {bad})")
        pats.append(_Pattern(_compile(st["pattern"], gap, where), tuple(st["labels"]), False, st["status"]))
    return _SetRules(names, tuple(pats))


def _parse_rules(data: dict, source: str) -> LabelerRules:
    try:
        gap = data.get("gap_word", r"[^\s.,;:]+")
        cues_raw = data["cues"]
        cues = {
            kind: tuple(_compile(p, gap, f"{source}: cues.{kind}") for p in cues_raw[kind])
            for kind in _CUE_KINDS
        }
        term = _compile("|".join(f"(?:{t})" for t in cues_raw["terminators"]), gap, f"{source}: terminators")
        sets = {name: _compile_set(name, body, gap, source) for name, body in data["label_sets"].items()}
        lat = tuple((k, _compile(v, gap, f"{source}: laterality")) for k, v in data["laterality"].items())
        mapping = {k: tuple(v) for k, v in data.get("iu_mesh_mapping", {}).get("labels", {}).items()}
        return LabelerRules(sets, cues, term, int(cues_raw["pre_window_words"]), int(cues_raw["post_window_words"]),
                            lat, mapping, source)
    except KeyError as err:
        raise ValueError(f"{source}: malformed labeler rules, missing key {err}") from err


@lru_cache(maxsize=4)
def load_rules(path: str | None = None) -> LabelerRules:
    """Load and compile labeler rules.

    Args:
        path: a JSON file with the schema of ``resources/labeler_rules.json``; None for the packaged one.

    Raises:
        ValueError: the file cannot be read or a rule is malformed (the message names the file).
    """
    if path is None:
        text = resources.files("ctxray").joinpath("resources/labeler_rules.json").read_text()
        return _parse_rules(json.loads(text), "ctxray/resources/labeler_rules.json")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read labeler rules: {err}") from err
    return _parse_rules(data, str(path))


def label_names(label_set: LabelSetName = "ct", rules: str | None = None) -> list[str]:
    """The ordered label names of a label set (columns of :func:`label_matrix`)."""
    return list(_get_set(load_rules(rules), label_set).names)


def _get_set(r: LabelerRules, label_set: str) -> _SetRules:
    if label_set not in r.sets:
        raise ValueError(f"unknown label set {label_set!r}; {r.source} defines {sorted(r.sets)}")
    return r.sets[label_set]


def normalise(text: str) -> str:
    """Lower-case, hyphens and dashes to spaces, a slash between words spaced out, collapse whitespace.

    "atelectasis/scarring" becomes "atelectasis / scarring" (two mentions); "r/o" is kept whole.
    """
    text = re.sub(r"[-\u2010-\u2014]", " ", str(text).lower())
    return " ".join(_WORD_SLASH.sub(" / ", text).split())


def split_sentences(text: str) -> list[str]:
    """Normalised sentences (split at ``. ; : ! ?`` followed by a space or the end)."""
    return [s for s, _ in _sentences(text)]


def _sentences(text: str) -> list[tuple[str, bool]]:
    """(sentence, ends with "?") pairs; a question ("effusion?") hedges what it names."""
    parts = _SENTENCE_END.split(normalise(text))  # [text, end, text, end, ..., text]
    ends = parts[1::2] + [""]
    return [(s.strip(), e == "?") for s, e in zip(parts[0::2], ends) if s.strip()]


def _find_cues(sentence: str, r: LabelerRules) -> list[tuple[int, int, str]]:
    """Non-overlapping cues ``(start, end, kind)``; earlier kinds claim their spans first."""
    order = _CUE_KINDS
    found = [(m.start(), m.end(), kind) for kind in order for rx in r.cues[kind] for m in rx.finditer(sentence)]
    # pseudo-negations first, then longest first (ties: uncertainty before negation, post before pre)
    found.sort(key=lambda c: (c[2] != "pseudo", -(c[1] - c[0]), order.index(c[2])))
    taken: list[tuple[int, int, str]] = []
    for s, e, kind in found:
        if not any(s < te and ts < e for ts, te, _ in taken):
            taken.append((s, e, kind))
    return sorted(t for t in taken if t[2] != "pseudo")


def _find_spans(sentence: str, rules: _SetRules) -> list[tuple[int, int, _Pattern]]:
    """Accepted pattern matches: longest first; masking matches hide strictly contained/overlapping ones."""
    cands = [(m.start(), m.end(), p) for p in rules.patterns for m in p.regex.finditer(sentence)]
    cands.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
    masks: list[tuple[int, int]] = []
    accepted = []
    for s, e, p in cands:
        if p.masking and any(s < me and ms < e and (ms, me) != (s, e) for ms, me in masks):
            continue
        if p.masking:
            masks.append((s, e))
        if p.labels != (None,):
            accepted.append((s, e, p))
    return accepted


def _words(text: str) -> int:
    return len(text.split())


def _status(sentence: str, s: int, e: int, cues: list[tuple[int, int, str]], r: LabelerRules) -> str:
    """Status of the mention ``sentence[s:e]`` from the cues around it."""
    for cs, _ce, kind in cues:  # nearest post-cue after the mention
        if kind.startswith(("post", "bi")) and cs >= e:
            gap = sentence[e:cs]
            if "," not in gap and not r.terminators.search(gap) and _words(gap) <= r.post_window:
                return "negative" if kind.endswith("negation") else "uncertain"
            break
    in_scope = [(cs, ce, kind) for cs, ce, kind in cues if kind.startswith(("pre", "bi")) and cs < e
                and (ce <= s or cs >= s) and not r.terminators.search(sentence[ce:s])
                and _words(sentence[ce:s]) <= r.pre_window]
    if not in_scope:
        return "positive"
    if in_scope[-1][2] == "pre_negation":
        return "negative"
    # a negation over the hedge(s), same phrase: "no opacity to suggest pneumonia", "no findings
    # suspicious for", "no line to suggest a or blunting to suggest b"; "to suggest" reaches over the
    # commas of a negated list ("no effusion, pneumothorax or consolidation to suggest pneumonia")
    purpose = sentence[: in_scope[-1][0]].endswith("to ")
    for _cs, ce, kind in reversed(in_scope[:-1]):
        if "," in sentence[ce : in_scope[-1][0]] and not purpose:
            break
        if kind == "pre_negation":
            return "negative"
    return "uncertain"


def _laterality(sentence: str, s: int, e: int, r: LabelerRules) -> str | None:
    """Side named in the comma-delimited phrase around a mention."""
    lo = sentence.rfind(",", 0, s) + 1
    hi = sentence.find(",", e)
    phrase = sentence[lo : hi if hi >= 0 else len(sentence)]
    found = {side for side, rx in r.laterality if rx.search(phrase)}
    if "bilateral" in found or {"left", "right"} <= found:
        return "bilateral"
    return next(iter(found), None)


def find_mentions(text: str, label_set: LabelSetName = "ct", rules: str | None = None) -> list[Mention]:
    """All label mentions of a report, in reading order.

    Args:
        text: report text (any case and whitespace).
        label_set: "ct" or "xray".
        rules: a rules JSON path; None for the packaged rules.
    """
    r = load_rules(rules)
    set_rules = _get_set(r, label_set)
    out: list[Mention] = []
    for sentence, question in _sentences(text):
        cues = _find_cues(sentence, r)
        for s, e, pat in sorted(_find_spans(sentence, set_rules), key=lambda c: c[0]):
            status = pat.status or _status(sentence, s, e, cues, r)
            if question and status == "positive":
                status = "uncertain"
            side = _laterality(sentence, s, e, r)
            out.extend(Mention(label, status, side, sentence, s, e) for label in pat.labels)
    return out


def label_report(text: str, label_set: LabelSetName = "ct", rules: str | None = None) -> dict[str, str]:
    """Status of every label of a label set in one report.

    Returns:
        ``{label name: "positive"|"negative"|"uncertain"|"absent"}`` in label-set order.
    """
    result = {name: "absent" for name in label_names(label_set, rules)}
    for m in find_mentions(text, label_set, rules):
        if _PRIORITY[m.status] < _PRIORITY[result[m.label]]:
            result[m.label] = m.status
    return result


def label_matrix(texts: Sequence[str], label_set: LabelSetName = "ct", uncertain_as: float = 1.0,
                 rules: str | None = None) -> np.ndarray:
    """Binary label matrix of many reports.

    Args:
        texts: reports.
        label_set: "ct" or "xray".
        uncertain_as: value for "uncertain" (1.0 counts hedged findings as present; NaN marks them).

    Returns:
        (N, L) float32: positive 1, uncertain ``uncertain_as``, negative and absent 0; columns in
        :func:`label_names` order.
    """
    names = label_names(label_set, rules)
    out = np.zeros((len(texts), len(names)), dtype=np.float32)
    value = {"positive": 1.0, "uncertain": uncertain_as, "negative": 0.0, "absent": 0.0}
    for i, text in enumerate(texts):
        for j, status in enumerate(label_report(text, label_set, rules).values()):
            out[i, j] = value[status]
    return out
