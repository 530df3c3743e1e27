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
