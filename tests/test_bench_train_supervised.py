"""bench/train_supervised.py's cell targets: one per training volume, on the net's grid, on the lesions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_supervised", ROOT / "bench" / "train_supervised.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_cell_targets_lie_on_the_lesions_in_the_cached_volumes(bench, tiny_cache, tiny_world, capsys):
    from ctxray.data.dataset import CTCacheDataset
    from ctxray.inference.localising import LocalisingClassifier
    from ctxray.inference.pointing import FOCAL
    from ctxray.labels import CT_RATE_LABELS

    part = CTCacheDataset(tiny_cache, split="train")
    shape = tuple(part.spec.shape_zyx)
    net = LocalisingClassifier(len(CT_RATE_LABELS), shape, layers=(1,), widths=(8,), stem_width=4,
                               stem_stride=(1, 1, 1))  # an 8x16x16 grid at the tiny spec
    ds = bench._with_cells([part], [str(tiny_cache)], [str(tiny_world)], net, 0.0, None)
    grid = net.stage_grid(shape, net.explain_stage)
    assert len(ds) == len(part)
    brighter, n = 0, 0
    for i in range(len(ds)):
        item = ds[i]
        cells = item["cells"].numpy()
        assert cells.shape == (len(CT_RATE_LABELS), *grid)
        for j, label in enumerate(CT_RATE_LABELS):
            if label not in FOCAL:
                assert np.isnan(cells[j]).all()
            elif float(item["labels"][j]) == 0:
                assert (cells[j] == 0).all()
        # the lesion's cells are denser than the same cells mirrored left-right (orientation through the cache);
        # the fluid and consolidation show at the tiny spec, its nodules and ground glass barely do
        vol = item["volume"][0].float()
        cell_mean = torch.nn.functional.adaptive_avg_pool3d(vol[None], grid)[0].numpy()
        for label in ("Consolidation", "Pleural effusion"):
            m = cells[CT_RATE_LABELS.index(label)] == 1
            if m.any():
                n += 1
                brighter += cell_mean[m].mean() > cell_mean[m[..., ::-1]].mean()
    # measured: 49 of 58 lesions on the tiny world (seed 0); a left-right slip of the targets would give < 0.5
    assert n >= 10 and brighter / n >= 0.7, (brighter, n)
    # the run says what it did to its input: per focal label, volumes with lesion cells and those left unknown
    printed = capsys.readouterr().out
    summary = {line.split("  ")[1].strip(): line for line in printed.splitlines() if line.startswith("  ")}
    assert set(summary) == set(FOCAL)
    for label in FOCAL:
        j = CT_RATE_LABELS.index(label)
        per = [ds[i]["cells"][j].numpy() for i in range(len(ds))]
        marked = sum(bool(not np.isnan(c).all() and c.sum() > 0) for c in per)
        unknown = sum(bool(np.isnan(c).all()) for c in per)
        assert f" {marked} (" in summary[label] and summary[label].endswith(f"unplaced {unknown}")


def test_cell_weight_needs_one_world_per_cache(bench, tiny_cache, tiny_world):
    from ctxray.data.dataset import CTCacheDataset
    from ctxray.inference.localising import LocalisingClassifier

    part = CTCacheDataset(tiny_cache, split="train")
    net = LocalisingClassifier(18, tuple(part.spec.shape_zyx), layers=(1,), widths=(8,), stem_width=4)
    with pytest.raises(SystemExit, match="one --worlds entry per cache"):
        bench._with_cells([part], [str(tiny_cache), str(tiny_cache)], [str(tiny_world)], net, 0.0, None)


def test_side_targets_from_the_reports_agree_with_the_worlds_lesions(bench, tiny_cache, tiny_world, capsys):
    """The labeler's sides of each training report against the world's ground truth: a report is the only side
    source a real dataset has, so it must say where the lesions are."""
    import json

    from torch.utils.data import ConcatDataset

    from ctxray.data.dataset import CTCacheDataset
    from ctxray.generate.checks import truth_sides
    from ctxray.labels import CT_RATE_LABELS

    part = CTCacheDataset(tiny_cache, split="train")
    ds = bench._with_sides(ConcatDataset([part]), CT_RATE_LABELS)
    assert "side targets from the training reports" in capsys.readouterr().out
    truth = {json.loads(line)["VolumeName"][:-7]: json.loads(line)
             for line in (tiny_world / "ct-rate" / "ground_truth.jsonl").read_text().splitlines()}
    agree, named = 0, 0
    for i in range(len(ds)):
        item = ds[i]
        sides = item["sides"].numpy()
        assert sides.shape == (len(CT_RATE_LABELS), 2)
        lesions = truth_sides(truth[item["id"]])
        for j, label in enumerate(CT_RATE_LABELS):
            if float(item["labels"][j]) == 0:
                assert (sides[j] == 0).all(), (item["id"], label)  # a finding the scan lacks is on neither side
            elif not np.isnan(sides[j]).any() and sides[j].sum() > 0 and label in lesions:
                named += 1
                agree += {w for w, v in zip(("left", "right"), sides[j]) if v == 1} == set(lesions[label])
    assert named > 50 and agree / named > 0.95


def test_side_readout_reads_a_classifier_folder_against_the_world(tiny_cache, tiny_world, tmp_path, capsys,
                                                                  monkeypatch):
    import json

    from safetensors.torch import save_file

    from ctxray.data.dataset import CTCacheDataset
    from ctxray.inference.supervised import build_from_info
    from ctxray.labels import CT_RATE_LABELS

    spec = importlib.util.spec_from_file_location("side_readout", ROOT / "bench" / "side_readout.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shape = list(CTCacheDataset(tiny_cache, split="valid").spec.shape_zyx)
    info = {"head": "lse", "input_shape": shape, "labels": list(CT_RATE_LABELS), "side_weight": 1.0,
            "encoder_kwargs": {"layers": [1], "widths": [8], "stem_width": 4, "stem_stride": [2, 2, 2]}}
    torch.manual_seed(0)
    folder = tmp_path / "sup"
    folder.mkdir()
    save_file(build_from_info(info).state_dict(), str(folder / "model.safetensors"))
    (folder / "classifier.json").write_text(json.dumps(info))
    out = tmp_path / "sides.json"
    monkeypatch.setattr(sys, "argv", ["side_readout", "--classifier", str(folder), "--cache", str(tiny_cache),
                                      "--world", str(tiny_world), "--out", str(out)])
    mod.main()
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert "machine:" in printed and "exact side set" in printed and result["side_weight"] == 1.0
    assert result["n"] == sum(v["n"] for v in result["per_label"].values()) > 0
    assert 0.0 <= result["exact"] <= 1.0 and 0.0 <= result["prior_exact"] <= 1.0
    (folder / "classifier.json").write_text(json.dumps({**info, "head": "linear"}))
    with pytest.raises(SystemExit, match="lse"):
        mod.main()


def test_external_encoder_must_give_a_pooled_output(bench, tmp_path, monkeypatch):
    """``--external module:function`` (a reference encoder built outside the project, e.g. CT-CLIP's CTViT) is
    trained like a registry encoder; one without ``out_dim`` and a (B, out_dim) output is refused by name."""
    (tmp_path / "ref_enc.py").write_text(
        "import torch\n"
        "class Pooled(torch.nn.Module):\n"
        "    def __init__(self, shape):\n"
        "        super().__init__()\n"
        "        self.conv, self.out_dim = torch.nn.Conv3d(1, 3, 4, stride=4), 3\n"
        "    def forward(self, x):\n"
        "        return self.conv(x).mean(dim=(2, 3, 4))\n"
        "def build(shape):\n"
        "    return Pooled(shape)\n"
        "def tokens(shape):\n"
        "    return torch.nn.Conv3d(1, 3, 4, stride=4)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    enc = bench._external("ref_enc:build", (8, 8, 8))
    assert enc(torch.rand(2, 1, 8, 8, 8)).shape == (2, 3)
    with pytest.raises(SystemExit, match=r"ref_enc:tokens: needs an int out_dim.*\(1, 3, 2, 2, 2\)"):
        bench._external("ref_enc:tokens", (8, 8, 8))
