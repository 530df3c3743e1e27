"""CTCacheDataset: memory-mapped items in the contract's shapes, split filter, seeded augmentation."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ctxray.data.cache import build_cache
from ctxray.data.dataset import Augment, CTCacheDataset
from ctxray.data.ingest import discover
from ctxray.data.spec import PreprocessSpec
from ctxray.labels import CT_RATE_LABELS

from .test_data_ctrate import phantom_hu


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nifti")
    rows = []
    for i in range(4):
        nib.save(nib.Nifti1Image(phantom_hu((10, 14, 16), seed=i).transpose(2, 1, 0), np.diag([1.5, 1.5, 3.0, 1.0])),
                 str(root / f"v{i}.nii.gz"))
        labels = [""] * 18 if i == 3 else [str((i + j) % 2) for j in range(18)]
        rows.append([f"v{i}.nii.gz", f"report {i}", "train" if i < 3 else "valid", *labels])
    with open(root / "reports.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["VolumeName", "report", "split", *CT_RATE_LABELS])
        w.writerows(rows)
    out = tmp_path_factory.mktemp("cache")
    build_cache(discover(root, reports_csv=root / "reports.csv").items, out,
                PreprocessSpec("t", (3.0, 1.5, 1.5), (8, 16, 16), dtype="uint8"))
    return out


def test_items_follow_the_contract(cache):
    ds = CTCacheDataset(cache)
    assert len(ds) == 4 and ds.ids == ["v0", "v1", "v2", "v3"]
    item = ds[1]
    assert item["id"] == "v1" and item["index"] == 1 and item["report"] == "report 1"
    assert item["volume"].shape == (1, 8, 16, 16) and item["volume"].dtype == torch.float32
    assert 0.0 <= float(item["volume"].min()) and float(item["volume"].max()) <= 1.0
    assert float(item["volume"].max()) > 0.5  # bone/soft tissue present, not all air
    np.testing.assert_array_equal(item["labels"].numpy(), [(1 + j) % 2 for j in range(18)])
    assert torch.isnan(ds[3]["labels"]).all()
    assert np.isnan(ds.labels_matrix()[3]).all() and ds.labels_matrix().shape == (4, 18)


def test_split_filter(cache):
    assert CTCacheDataset(cache, split="valid").ids == ["v3"]
    assert len(CTCacheDataset(cache, split="train")) == 3


def test_augmentation_is_seeded_and_varies(cache):
    aug = {"crop_zyx": (6, 12, 12), "flip_prob_zyx": (0.5, 0.5, 0.0), "scale": 0.2, "shift": 0.1}
    a, b = CTCacheDataset(cache, augment=aug, seed=7), CTCacheDataset(cache, augment=aug, seed=7)
    x = a[0]["volume"]
    assert x.shape == (1, 6, 12, 12)
    assert torch.equal(x, b[0]["volume"])  # same seed, same sample
    a.set_epoch(1)
    assert not torch.equal(x, a[0]["volume"])  # a new epoch draws anew
    assert not torch.equal(x, CTCacheDataset(cache, augment=aug, seed=8)[0]["volume"])
    plain = CTCacheDataset(cache)[0]["volume"]
    assert torch.equal(plain, CTCacheDataset(cache)[0]["volume"])  # no augmentation: the cached array


def test_augment_rejects_a_crop_larger_than_the_volume():
    with pytest.raises(ValueError, match="larger than the volume"):
        Augment(crop_zyx=(9, 4, 4))(np.zeros((8, 8, 8), np.float32), np.random.default_rng(0))


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.jsonl: no manifest"):
        CTCacheDataset(tmp_path)
