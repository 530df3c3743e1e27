"""The pointing game: hits, margins, the random-point baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctxray.inference.pointing import Lesion, PointingCase, format_table, lesion_radius_mm, map_peak, pointing_game


def test_map_peak_ignores_nan():
    m = np.zeros((4, 5, 6), np.float32)
    m[1, 2, 3] = 2.0
    m[0, 0, 0] = np.nan
    assert map_peak(m) == (1, 2, 3)


def test_lesion_radius():
    assert lesion_radius_mm(12.0) == 6.0
    assert lesion_radius_mm([10, 30, 20]) == 15.0
    assert lesion_radius_mm(None) == 0.0


def test_hits_respect_radius_margin_and_spacing():
    shape, spacing = (20, 20, 20), (5.0, 1.0, 1.0)
    lesion = Lesion("Lung nodule", (10, 10, 10), radius_mm=3.0)
    # 2 voxels away along z = 10 mm: a miss with margin 5 (3 + 5 < 10), a hit with margin 7
    case = PointingCase("v", "Lung nodule", (12, 10, 10), [lesion], shape, spacing)
    assert pointing_game([case], margin_mm=5.0)["Lung nodule"].hits == 0
    assert pointing_game([case], margin_mm=7.0)["Lung nodule"].hits == 1
    # the same voxel distance along x is 2 mm: a hit even with margin 0
    case_x = PointingCase("v", "Lung nodule", (10, 10, 12), [lesion], shape, spacing)
    assert pointing_game([case_x], margin_mm=0.0)["Lung nodule"].hits == 1
    # any lesion of the label counts
    far = Lesion("Lung nodule", (0, 0, 0), 1.0)
    case2 = PointingCase("w", "Lung nodule", (0, 1, 0), [lesion, far], shape, spacing)
    res = pointing_game([case, case2], margin_mm=5.0)["Lung nodule"]
    assert (res.n, res.hits, res.rate) == (2, 1, 0.5)


def test_random_baseline_matches_the_sphere_fraction():
    shape, spacing = (40, 40, 40), (1.0, 1.0, 1.0)
    r = 8.0
    case = PointingCase("v", "Emphysema", (20, 20, 20), [Lesion("Emphysema", (20, 20, 20), r)], shape, spacing)
    res = pointing_game([case], margin_mm=0.0, n_random=20000, seed=1)["Emphysema"]
    expected = (4 / 3) * math.pi * r**3 / 40**3
    assert res.baseline == pytest.approx(expected, rel=0.1)
    assert "| Emphysema | 1 | 1 | 1.000 |" in format_table({"Emphysema": res}, 0.0)


def test_case_without_lesion_is_an_error():
    with pytest.raises(ValueError, match="no lesion"):
        pointing_game([PointingCase("v", "A", (0, 0, 0), [], (2, 2, 2), (1, 1, 1))], margin_mm=1)
