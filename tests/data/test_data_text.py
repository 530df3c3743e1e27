import math

from ctxray.data.text import clean_field, report_text


def test_report_text_drops_empty_markers_and_normalises_space():
    assert report_text("Heart  size\nnormal. ", "Not given.") == "Heart size normal."
    assert report_text("Not given.", " No effusion.") == "No effusion."
    assert report_text(math.nan, None) == ""
    assert report_text("A.", "B.") == "A. B."
    assert clean_field("not given") == ""


def test_swap_sides_swaps_left_and_right_words_only_and_keeps_case():
    from ctxray.data.text import names_side, swap_sides

    text = "Right pleural effusion. LEFT lung clear; bilateral nodules, leftover, righteous, left-sided."
    assert swap_sides(text) == ("Left pleural effusion. RIGHT lung clear; bilateral nodules, leftover, righteous, "
                                "right-sided.")
    assert swap_sides(swap_sides(text)) == text
    assert names_side("nodule in the left lower lobe") and names_side("RIGHT")
    assert not names_side("Bilateral effusions. Leftover contrast; a righteous heart.")
