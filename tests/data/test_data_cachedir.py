"""The cache reader: manifest rows by split, scan ids, spec, volume paths, and its errors."""

from __future__ import annotations

import json

import pytest

from ctxray.data.cachedir import manifest_path, read_manifest, read_scan_ids, read_spec, volume_path
from ctxray.data.spec import get_preset


def test_read_scan_ids(tmp_path):
    (tmp_path / "manifest.jsonl").write_text(
        json.dumps({"id": "v1", "scan_id": "s1"}) + "\n" + json.dumps({"id": "v2"}) + "\n\n")
    assert read_scan_ids(tmp_path) == {"v1": "s1", "v2": "v2"}
    (tmp_path / "manifest.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="manifest.jsonl:1"):
        read_scan_ids(tmp_path)
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_scan_ids(tmp_path / "nope")


def test_rows_by_split_spec_and_volume_path(tmp_path):
    rows = [{"id": "a", "split": "train", "file": "volumes/a.npy"},
            {"id": "b", "split": "valid", "file": "volumes/b.npy"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    get_preset("tiny").save(tmp_path / "spec.json")
    assert [r["id"] for r in read_manifest(tmp_path, "valid")] == ["b"]
    assert read_manifest(tmp_path) == read_manifest(manifest_path(tmp_path))  # the folder or the file itself
    assert read_spec(tmp_path) == get_preset("tiny")
    assert volume_path(tmp_path, rows[0]) == tmp_path / "volumes" / "a.npy"
    assert volume_path(tmp_path, {"id": "c", "file": "elsewhere/c.npy"}) == tmp_path / "elsewhere" / "c.npy"
    assert volume_path(tmp_path, {"id": "d"}) == tmp_path / "volumes" / "d.npy"  # a row without ``file``
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"split": "train"}) + "\n")
    with pytest.raises(ValueError, match="manifest.jsonl:1: bad manifest line"):
        read_manifest(tmp_path)


def test_one_read_serves_every_split(tmp_path):
    from ctxray.data.cachedir import read_cache
    from ctxray.data.dataset import CTCacheDataset

    rows = [{"id": "a", "split": "train", "file": "volumes/a.npy", "report": "r", "labels": None},
            {"id": "b", "split": "valid", "file": "volumes/b.npy", "report": "s", "labels": None}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    get_preset("tiny").save(tmp_path / "spec.json")
    index = read_cache(tmp_path)
    assert [r["id"] for r in index.split("valid")] == ["b"] and len(index.split(None)) == 2
    assert index.input_shape == tuple(get_preset("tiny").shape_zyx)
    for split in ("train", "valid"):
        from_index, from_folder = CTCacheDataset(index, split), CTCacheDataset(tmp_path, split)
        assert from_index.entries == from_folder.entries and from_index.spec == from_folder.spec
        assert from_index.cache_dir == from_folder.cache_dir
