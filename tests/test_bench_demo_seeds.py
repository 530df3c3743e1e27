"""bench/demo_seeds.py summarises per-seed runs against the demo's own seed-0 folder: the paired difference,
its t-interval over seeds, and the retrieval row per expert seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("demo_seeds", ROOT / "bench" / "demo_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_summary_pairs_seeds_and_lists_every_expert(tmp_path):
    demo = tmp_path / "demo"
    _write(demo / "runs" / "plain" / "metrics.json", {"val_auroc": 0.70, "collapsed_steps": 0})
    _write(demo / "runs" / "full" / "metrics.json", {"val_auroc": 0.72, "collapsed_steps": 3})
    quality = {"agreement_top1": {"text": {"exact": 0.8, "jaccard": 0.9}}, "hubness": {"max_ct_per_xray": 13},
               "normal_to_abnormal": 0.0}
    _write(demo / "retrieval" / "quality.json", quality)
    _write(demo / "teacher" / "metrics.json", {"zero_shot_auc": {"macro": 0.89}})
    res = {"plain_seed1": {"val_auroc": 0.60, "collapsed_steps": 0},
           "full_seed1": {"val_auroc": 0.66, "collapsed_steps": 0},
           "plain_seed2": {"val_auroc": 0.50, "collapsed_steps": 0},  # its full run is missing: seed 2 is left out
           "teacher1": {"expert_macro": 0.91, "quality": {**quality, "hubness": {"max_ct_per_xray": 40}}}}
    text = _bench().summarise(demo, res)
    assert "| 0 | 0.700 | 0.720 | +0.020 | 0 / 3 |" in text
    assert "| 1 | 0.600 | 0.660 | +0.060 | 0 / 0 |" in text
    assert "| 2 |" not in text.split("expert seed")[0]
    # mean +0.040, sd 0.0283, se 0.02, t(1) 12.706 -> +-0.254
    assert "mean full - plain +0.040, 95% t-interval over seeds [-0.214, +0.294] (2 seeds)" in text
    assert "| 1 | 0.910 | 0.800 | 0.900 | 40 | 0.000 |" in text


def test_summary_takes_every_seed_it_finds(tmp_path):
    demo = tmp_path / "demo"
    _write(demo / "runs" / "plain" / "metrics.json", {"val_auroc": 0.70, "collapsed_steps": 0})
    _write(demo / "runs" / "full" / "metrics.json", {"val_auroc": 0.70, "collapsed_steps": 0})
    quality = {"agreement_top1": {"text": {"exact": 0.8, "jaccard": 0.9}}, "hubness": {"max_ct_per_xray": 13}}
    _write(demo / "retrieval" / "quality.json", quality)
    _write(demo / "teacher" / "metrics.json", {"zero_shot_auc": {"macro": 0.89}})
    res = {f"{name}_seed{s}": {"val_auroc": 0.70 + 0.01 * s * (name == "full"), "collapsed_steps": 0}
           for s in (3, 12) for name in ("plain", "full")}
    text = _bench().summarise(demo, res)
    assert "| 12 | 0.700 | 0.820 | +0.120 | 0 / 0 |" in text
    assert "(3 seeds)" in text
