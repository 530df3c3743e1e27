import os
import stat

import pytest

from ctxray.utils.io import atomic_write, atomic_write_text, sha256_file


def test_atomic_write_replaces_and_uses_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "a.npy"
    atomic_write_text(target, "old")

    def boom(p):
        p.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]
    assert len(sha256_file(target)) == 64


def test_atomic_write_dir_swaps_whole_folders_and_cleans_up_on_failure(tmp_path):
    from ctxray.utils.io import atomic_write_dir

    dest = tmp_path / "model"
    atomic_write_dir(dest, lambda tmp: (tmp / "a.txt").write_text("one"))
    assert (dest / "a.txt").read_text() == "one"

    def fail(tmp):
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_dir(dest, fail)
    assert (dest / "a.txt").read_text() == "one"  # the old folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left behind
    atomic_write_dir(dest, lambda tmp: (tmp / "b.txt").write_text("two"))
    assert sorted(p.name for p in dest.iterdir()) == ["b.txt"]  # replaced as a whole


def test_json_safe_replaces_non_finite_numbers_everywhere():
    import json
    import math

    from ctxray.utils.io import json_safe

    data = {"a": [1.0, math.nan, (2, -math.inf)], "b": {"c": math.inf, "d": "x"}, "e": 3}
    assert json_safe(data) == {"a": [1.0, None, [2, None]], "b": {"c": None, "d": "x"}, "e": 3}
    json.dumps(json_safe(data), allow_nan=False)
