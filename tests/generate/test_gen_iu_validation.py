"""The labeler's external check on IU reports: the fixed dev / held-out split and the MeSH -> label mapping."""

from __future__ import annotations

import hashlib

import numpy as np

from ctxray.generate.iu_validation import iu_half, mesh_label_matrix
from ctxray.labeler import label_names


def test_halves_follow_the_parity_of_the_ids_sha256():
    ids = [f"CXR{i}_IM-{i % 97:04d}" for i in range(400)]
    halves = [iu_half(i) for i in ids]
    for i, half in zip(ids, halves):
        even = int(hashlib.sha256(i.encode()).hexdigest(), 16) % 2 == 0
        assert half == ("dev" if even else "heldout")
    assert 150 < halves.count("dev") < 250  # about half each, not one side only
    assert halves == [iu_half(i) for i in ids]  # the same on every call


def test_mesh_terms_map_by_head_and_qualifiers():
    names = label_names("xray")
    col = {n: j for j, n in enumerate(names)}
    y = mesh_label_matrix([
        ["Cardiomegaly/mild"],                  # head match, any qualifier
        ["normal"],                             # negative for every label
        ["Opacity/lung/base/left"],             # 'opacity/lung' needs 'lung' among the qualifiers
        ["Opacity/spine"],                      # ... which it is not here
        ["Opacity/lung/round", "Hernia, Hiatal"],
    ])
    assert y.shape == (5, len(names)) and y.dtype == np.float32
    assert np.flatnonzero(y[0]).tolist() == [col["Cardiomegaly"]]
    assert not y[1].any() and not y[3].any()
    assert np.flatnonzero(y[2]).tolist() == [col["Lung opacity"]]
    assert y[4, col["Nodule/mass"]] == y[4, col["Lung opacity"]] == y[4, col["Hiatal hernia"]] == 1.0
