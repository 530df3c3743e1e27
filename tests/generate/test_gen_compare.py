"""The comparison table: one row per generator plus the shared trivial baseline; mismatches refused."""

from __future__ import annotations

import json

import pytest

from ctxray.generate.compare import examples, metrics_table


def _scores(bleu1: float, f1: float, meteor: float | None) -> dict:
    nlg = {"BLEU-1": bleu1, "BLEU-2": 0.2, "BLEU-3": 0.1, "BLEU-4": 0.05, "METEOR": meteor, "ROUGE-L": 0.3,
           "CIDEr": 0.4, "tokenizer": "simple", "n": 3}
    macro = {"label": "macro", "precision": 0.5, "recall": 0.25, "f1": f1, "support": 4, "predicted": 2}
    micro = {**macro, "label": "micro", "f1": None}
    return {"nlg": nlg, "clinical": {"per_label": [], "macro": macro, "micro": micro}}


def _write(folder, bleu1: float, baseline_report: str = "Normal.", n_eval: int = 3) -> None:
    folder.mkdir()
    metrics = {"n_train": 10, "n_eval": n_eval, "model": _scores(bleu1, 0.4, None),
               "trivial_baseline": _scores(0.9, 0.0, None), "trivial_baseline_report": baseline_report}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "samples.jsonl").write_text(json.dumps({"id": "v1", "reference": "Ref.", "generated": "Gen."}) + "\n")


def test_metrics_table_rows_and_values(tmp_path) -> None:
    _write(tmp_path / "a", 0.123)
    _write(tmp_path / "b", 0.456)
    table = metrics_table({"full": tmp_path / "a", "plain": tmp_path / "b"})
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| generator", "| full", "| plain",
                                                 "| trivial baseline (most common report)"]
    assert "| 0.123 |" in rows[1] and "| 0.456 |" in rows[2] and "| 0.900 |" in rows[3]
    assert rows[1].count("n/a") == 2  # METEOR without Java and the undefined micro F1
    assert "METEOR n/a (no Java)" in table
    assert "- generated: Gen." in examples(tmp_path / "a", 1)


def test_metrics_table_refuses_different_evaluations(tmp_path) -> None:
    _write(tmp_path / "a", 0.1)
    _write(tmp_path / "b", 0.2, n_eval=4)
    with pytest.raises(ValueError, match="other volumes"):
        metrics_table({"a": tmp_path / "a", "b": tmp_path / "b"})
    with pytest.raises(ValueError, match="metrics.json"):
        metrics_table({"c": tmp_path / "missing"})
