"""Label names and zero-shot prompts: the one place every stage reads them from.

The packaged file ``resources/labels.json`` holds the 18 CT-RATE abnormality labels in CT-RATE's
column order, whether a frontal radiograph can show each, and the prompt phrases. Users can pass
their own file of the same schema (``--labels FILE``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Label:
    """One abnormality label.

    Args:
        name: exact column name (CT-RATE spelling).
        xray_visible: whether a frontal chest radiograph can show it.
        prevalence: reference prevalence (CT-RATE validation split), or None.
        phrases: noun phrases used to fill the prompt templates.
    """

    name: str
    xray_visible: bool
    prevalence: float | None
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class LabelSet:
    """An ordered label set with prompt templates."""

    labels: tuple[Label, ...]
    positive_templates: tuple[str, ...]
    negative_templates: tuple[str, ...]
    source: str

    @property
    def names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def xray_visible_names(self) -> list[str]:
        return [label.name for label in self.labels if label.xray_visible]

    def __len__(self) -> int:
        return len(self.labels)

    def index(self, name: str) -> int:
        for i, label in enumerate(self.labels):
            if label.name == name:
                return i
        raise KeyError(f"unknown label {name!r}; known: {self.names}")

    def prompts(self, name: str) -> tuple[list[str], list[str]]:
        """Positive and negative prompt ensembles for one label.

        Returns:
            (positive prompts, negative prompts): every template filled with every phrase.
        """
        label = self.labels[self.index(name)]
        pos = [t.format(p) for t in self.positive_templates for p in label.phrases]
        neg = [t.format(p) for t in self.negative_templates for p in label.phrases]
        return pos, neg


def _parse(data: dict, source: str) -> LabelSet:
    try:
        labels = tuple(
            Label(
                name=item["name"],
                xray_visible=bool(item.get("xray_visible", False)),
                prevalence=item.get("prevalence_ct_rate_valid"),
                phrases=tuple(item.get("phrases") or [item["name"].lower()]),
            )
            for item in data["labels"]
        )
        templates = data["prompt_templates"]
        pos, neg = tuple(templates["positive"]), tuple(templates["negative"])
    except (KeyError, TypeError) as err:
        raise ValueError(f"{source}: malformed label file, missing {err}") from err
    if len({label.name for label in labels}) != len(labels):
        raise ValueError(f"{source}: duplicate label names")
    for t in pos + neg:
        if "{}" not in t:
            raise ValueError(f"{source}: prompt template {t!r} has no '{{}}' placeholder")
    return LabelSet(labels, pos, neg, source)


def packaged_labels_text() -> str:
    """The text of the packaged ``resources/labels.json`` (written verbatim into exported model folders)."""
    return resources.files("ctxray").joinpath("resources/labels.json").read_text()


@lru_cache(maxsize=8)
def load_labels(path: str | None = None) -> LabelSet:
    """Load a label set.

    Args:
        path: a JSON file with the schema of ``resources/labels.json``; None for the packaged one.
    """
    if path is None:
        return _parse(json.loads(packaged_labels_text()), "ctxray/resources/labels.json")
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{p}: cannot read label file: {err}") from err
    return _parse(data, str(p))


CT_RATE_LABELS: list[str] = load_labels().names
"""The 18 CT-RATE abnormality names in CT-RATE's column order."""
