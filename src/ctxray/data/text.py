"""Report text: the one function that turns CT-RATE-style report fields into model text."""

from __future__ import annotations

import math
import re

EMPTY_MARKERS = {"", "not given.", "not given", "nan", "none", "n/a"}
_WS = re.compile(r"\s+")


def clean_field(value: object) -> str:
    """Normalise whitespace; empty markers ("Not given.", NaN, None) become ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = _WS.sub(" ", str(value)).strip()
    return "" if text.lower() in EMPTY_MARKERS else text


def report_text(findings: object, impression: object) -> str:
    """Findings then Impression, cleaned, joined by a space (either may be empty).

    Example:
        >>> report_text("Heart size normal.  ", "Not given.")
        'Heart size normal.'
    """
    parts = [clean_field(findings), clean_field(impression)]
    return " ".join(p for p in parts if p)


_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)
_OTHER_SIDE = {"left": "right", "right": "left"}


def names_side(text: str) -> bool:
    """Whether ``text`` has the word "left" or "right" (any case)."""
    return _SIDE.search(text) is not None


def swap_sides(text: str) -> str:
    """The report of the left-right mirror image: every word "left" becomes "right" and back, case kept
    ("Left" -> "Right", "RIGHT" -> "LEFT"); "bilateral" and every other word stay.

    Example:
        >>> swap_sides("Nodule in the right lower lobe; left lung clear.")
        'Nodule in the left lower lobe; right lung clear.'
    """

    def other(m: re.Match) -> str:
        word = m.group(0)
        new = _OTHER_SIDE[word.lower()]
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _SIDE.sub(other, text)
