"""The synthetic world's tables name exactly the labels of ``labels.json`` (no stale or missing name)."""

from __future__ import annotations

from collections import Counter

from ctxray.labels import load_labels
from ctxray.synth.findings import BUILDERS, LINKS, WEIGHTS
from ctxray.synth.reports import POSITIVE, REGIONS


def test_every_label_has_a_prevalence_weight_a_lesion_builder_and_a_report_sentence() -> None:
    names = set(load_labels().names)
    assert len(names) == 18
    for table in (WEIGHTS, BUILDERS, POSITIVE):
        assert set(table) == names, set(table) ^ names


def test_co_occurrence_links_name_labels() -> None:
    names = set(load_labels().names)
    for a, b, weight in LINKS:
        assert a in names and b in names and a != b and weight > 0


def test_each_label_is_reported_in_exactly_one_report_region() -> None:
    covered = Counter(name for labels, _ in REGIONS for name in labels)
    assert set(covered) == set(load_labels().names)
    assert max(covered.values()) == 1
