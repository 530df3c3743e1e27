"""bench/bench_train.py divides only by a supplied reference that records its machine, and says when that machine
is not this one."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "bench" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


MACHINE = {"cpu_model": "AMD EPYC", "cores": 2, "torch_threads": 2, "gpu": None}
RESULT = {"wall": 2.0, "cpu": 3.0, "peak_gb": 0.5, "base_gb": 0.2, "tokens": 1000, "params_m": 12.0}


def test_no_figure_of_another_machine_is_built_in(bench):
    source = (ROOT / "bench" / "bench_train.py").read_text()
    assert not hasattr(bench, "REFERENCE") and "28.1" not in source and "12.7" not in source
    cfg = bench.Config((100, 200, 200), (10, 20, 20))
    row = bench.format_row(cfg, RESULT, threads=1)  # no reference: figures, no ratios
    assert row.split()[-5:] == ["2.00", "0.50", "3.00", "0.50", "0.20"]


def test_shipped_ctvit_reference_loads_with_its_machine(bench):
    ref = bench.load_reference(ROOT / "bench" / "reference_ctvit_amd_epyc.json")
    assert ref["machine"]["cpu_model"] == "AMD EPYC" and ref["machine"]["torch_threads"] == 2
    assert "outside review" in ref["source"] and "not by this project" in ref["source"]
    assert ref["by_key"][((100, 200, 200), 1)]["s_per_step"] == (1.57, 2.06)
    assert ref["by_key"][((240, 480, 480), 1)]["s_per_step"] == (53.8, 53.8)
    assert ref["by_key"][((240, 480, 480), 1)]["peak_gb"] == 11.63


def test_ratios_against_a_reference_range_and_the_goal(bench, tmp_path):
    path = tmp_path / "ref.json"
    rows = [{"shape": [100, 200, 200], "s_per_step": [6.0, 8.0], "peak_gb": 2.0, "tokens": 1000}]
    path.write_text(json.dumps({"machine": MACHINE, "rows": rows}))
    ref = bench.load_reference(path)
    cfg = bench.Config((100, 200, 200), (10, 20, 20))
    row = bench.format_row(cfg, RESULT, threads=1, ref=ref)
    # memory 0.5 / 2.0; speed by wall 6/2 .. 8/2; by CPU/threads 6/3 .. 8/3 (goal needs the whole range >= 3x)
    assert "0.25" in row and "3.00-4.00x yes" in row and "2.00-2.67x  no" in row
    other = bench.format_row(bench.Config((48, 96, 96), (16, 16, 16)), RESULT, 1, ref)  # no reference row
    assert other.endswith("0.20") and "yes" not in other and " no" not in other


def test_a_different_machine_or_thread_count_is_named(bench):
    ref = {"machine": MACHINE, "encoder": "CTViT", "source": "review"}
    here = {**MACHINE, "torch_threads": 1}
    lines = bench.describe_reference(ref, here)
    assert "AMD EPYC, 2 cores, 2 thread(s)" in lines[1] and lines[-1].startswith("NOTE")
    assert not bench.describe_reference(ref, MACHINE)[-1].startswith("NOTE")


@pytest.mark.parametrize("content, match", [
    ("not json", "not a readable JSON"),
    (json.dumps({"rows": [{"shape": [1, 2, 3], "s_per_step": 1, "peak_gb": 1}]}), "must record its machine"),
    (json.dumps({"machine": MACHINE, "rows": []}), "non-empty"),
    (json.dumps({"machine": MACHINE, "rows": [{"shape": [1, 2, 3], "peak_gb": 1}]}), r"rows\[0\]"),
    (json.dumps({"machine": MACHINE, "rows": [{"shape": [1, 2], "s_per_step": 1, "peak_gb": 1}]}), "3 sizes"),
])  # fmt: skip
def test_bad_reference_files_are_refused_naming_the_file(bench, tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        bench.load_reference(path)
    assert "bad.json" in str(err.value)


def test_encoders_run_side_by_side_at_the_same_patches(bench):
    cfgs = bench.default_configs(["100x200x200"], 8, ["vit3d_small", "vit3d_axial_small"], ("fp32",), ("main",))
    assert [(c.encoder, c.patch) for c in cfgs] == [("vit3d_small", (10, 20, 20)), ("vit3d_axial_small", (10, 20, 20))]
    cfgs = bench.default_configs(["240x480x480"], 8, ["vit3d_axial_small"], ("fp32",), ("ctvit",))
    assert [c.patch for c in cfgs] == [(10, 20, 20)]


def test_an_external_reference_runs_first_per_shape_and_rows_divide_by_it(bench, tmp_path, monkeypatch):
    cfgs = bench.with_external(bench.default_configs(["demo", "100x200x200"], 8, ["vit3d_small"], ("fp32",),
                                                     ("main",)), "my_ref:build", "my_ref")
    assert [(c.encoder, c.shape, c.batch) for c in cfgs] == [
        ("my_ref", (48, 96, 96), 1), ("vit3d_small", (48, 96, 96), 1), ("vit3d_small", (48, 96, 96), 8),
        ("my_ref", (100, 200, 200), 1), ("vit3d_small", (100, 200, 200), 1)]
    ref = bench.in_run_reference(cfgs[3], {"wall": 6.0, "cpu": 9.0, "peak_gb": 2.0, "tokens": 1000}, 1, MACHINE)
    row = bench.format_row(cfgs[4], RESULT, threads=1, ref=ref)
    # memory 0.5 / 2.0; wall 6 / 2 = 3x, CPU 9 / 3 = 3x: both meet the goal; a batch-8 row has no reference
    assert "0.25" in row and row.count("3.00x yes") == 2
    batch8 = bench.format_row(cfgs[2], RESULT, 1, ref)
    assert " no" not in batch8 and "yes" not in batch8
    (tmp_path / "my_ref.py").write_text("import torch\n"
                                        "def build(shape):\n"
                                        "    net = torch.nn.Conv3d(1, 2, 4, stride=4)\n"
                                        "    net.n_tokens = 7\n"
                                        "    return net\n"
                                        "def not_a_module(shape):\n"
                                        "    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = bench.worker(bench.Config((8, 8, 8), None, 1, encoder="my_ref", external="my_ref:build"), 1, 0, 1)
    assert res["tokens"] == 7 and res["wall"] > 0 and res["params_m"] > 0
    with pytest.raises(ValueError, match="not an nn.Module"):
        bench.build_external("my_ref:not_a_module", (8, 8, 8))
    with pytest.raises(ValueError, match="module:function"):
        bench.build_external("my_ref", (8, 8, 8))
    assert bench.main(["--reference", "x.json", "--external", "my_ref:build"]) == 2


def test_shipped_same_machine_ctvit_reference_loads(bench):
    ref = bench.load_reference(ROOT / "bench" / "reference_ctvit_intel_xeon.json")
    assert ref["machine"]["cpu_model"].startswith("Intel") and ref["machine"]["torch_threads"] == 2
    assert "measured by this project" in ref["source"] and "never copied into ctxray" in ref["encoder"]
    assert ref["by_key"][((240, 480, 480), 1)]["tokens"] == 13824


def test_main_measures_the_external_first_and_saves_it_as_the_reference(bench, tmp_path, monkeypatch, capsys):
    (tmp_path / "conv_ref.py").write_text("import torch\n"
                                          "def build(shape):\n"
                                          "    return torch.nn.Conv3d(1, 4, 16, stride=16)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    saved = tmp_path / "run.json"
    assert bench.main(["--shapes", "demo", "--encoders", "vit3d_tiny", "--levers", "fp32", "--demo-batch", "2",
                       "--threads", "1", "--steps", "1", "--warmup", "0", "--external", "conv_ref:build",
                       "--save", str(saved)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "48x96x96" in line]
    assert [line.split()[0] for line in lines] == ["conv_ref", "vit3d_tiny", "vit3d_tiny"]
    assert "x " in lines[1] and ("yes" in lines[1] or " no" in lines[1])  # batch 1: ratios against conv_ref
    assert "yes" not in lines[2] and " no" not in lines[2]  # batch 2: no reference row of that batch
    ref = bench.load_reference(saved)  # the saved run is a reference whose first row per shape is the external
    assert ref["by_key"][((48, 96, 96), 1)]["encoder"] == "conv_ref" and ref["encoder"] == "conv_ref, vit3d_tiny"


def test_encoder_variants_run_side_by_side_by_spec(bench):
    assert bench.parse_encoder_spec("vit3d_axial_slim") == ("vit3d_axial_slim", {})
    assert bench.parse_encoder_spec("vit3d_axial_slim_conv:stem_width=8,stem=conv") == (
        "vit3d_axial_slim_conv", {"stem_width": 8, "stem": "conv"})
    with pytest.raises(ValueError, match="key=value"):
        bench.parse_encoder_spec("vit3d_tiny:patch_size=8,16")
    assert bench.parse_encoder_spec("my_module:build") == ("my_module:build", {})  # an encoder of your own
    assert bench.parse_encoder_spec("my_module:build:width=5") == ("my_module:build", {"width": 5})
    # the options reach the encoder: a narrower conv stem has fewer parameters
    narrow, wide = (bench.worker(bench.Config((16, 32, 32), (8, 16, 16), 1,
                                              encoder=f"vit3d_tiny:stem=conv,stem_width={w}"), 1, 0, 1)
                    for w in (4, 16))  # fmt: skip
    assert narrow["params_m"] < wide["params_m"] and narrow["tokens"] == 8


def test_step_memory_compares_peaks_above_each_runtime_base(bench):
    cfg = bench.Config((100, 200, 200), (10, 20, 20), 1)
    ref = bench.in_run_reference(cfg, {"wall": 6.0, "cpu": 9.0, "peak_gb": 2.0, "base_gb": 0.5, "tokens": 1000}, 1,
                                 MACHINE)  # fmt: skip
    row = bench.format_row(cfg, RESULT, threads=1, ref=ref)  # peak 0.5, base 0.2: (0.5 - 0.2) / (2.0 - 0.5)
    assert " 0.25  0.20 " in row  # total memory 0.5 / 2.0, then the step's own
    no_base = {"by_key": {((100, 200, 200), 1): {"s_per_step": (6.0, 6.0), "peak_gb": 2.0}}}
    assert " 0.25     - " in bench.format_row(cfg, RESULT, threads=1, ref=no_base)  # a JSON reference without a base
    # each row runs in a fresh process whose peak is its own, even when the parent holds far more (ru_maxrss would
    # carry the parent's peak over the fork); its base is the runtime before the encoder and its 8 MB input
    parent = torch.ones(160 * 2**20)  # 640 MB held (and touched) by this process
    res = bench.run_config(bench.Config((64, 128, 128), (16, 32, 32), 1, encoder="vit3d_tiny"), 1, 0, 1)
    assert 0.1 < res["base_gb"] < parent.numel() * 4 / 2**30 and res["peak_gb"] - res["base_gb"] > 0.008, res
