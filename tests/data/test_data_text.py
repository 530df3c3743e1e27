import math

from ctxray.data.text import clean_field, report_text


def test_report_text_drops_empty_markers_and_normalises_space():
    assert report_text("Heart  size\nnormal. ", "Not given.") == "Heart size normal."
    assert report_text("Not given.", " No effusion.") == "No effusion."
    assert report_text(math.nan, None) == ""
    assert report_text("A.", "B.") == "A. B."
    assert clean_field("not given") == ""
