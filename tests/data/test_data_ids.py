"""Volume ids: one derivation for every stage (preprocess, retrieval targets, report generation)."""

from __future__ import annotations

import pytest

from ctxray.data.ids import ct_id, safe_id, strip_volume_suffix


@pytest.mark.parametrize(("name", "want"), [("train_1_a_1.nii.gz", "train_1_a_1"), ("train_1_a_1", "train_1_a_1"),
                                            ("case 01.nii", "case_01"), ("trn00001.npz", "trn00001"),
                                            ("dcm-0123abcd", "dcm-0123abcd")])
def test_ct_id_of_file_names_and_ids(name, want):
    assert ct_id(name) == want


@pytest.mark.parametrize("name", ["train_1_a_1.nii.gz", "Müller 3.nii.gz", "胸部1", "a/b c.npy", "__x__"])
def test_a_cache_id_is_its_own_ct_id(name):
    """What preprocess wrote as an id maps to itself, so retrieval and generation find the same rows."""
    cache_id = safe_id(strip_volume_suffix(name))
    assert ct_id(cache_id) == cache_id == ct_id(name)
