"""Tables comparing report generators (``G/metrics.json``) and their trivial baseline.

``ctxray generate compare full=G1 plain=G2 random=G3`` prints a Markdown table with one row per
generator and one for the trivial baseline (the most common training report), which must be the
same for every generator compared (same train and eval volumes), and a few examples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

NLG_COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _read(folder: str | Path) -> dict:
    path = Path(folder) / "metrics.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read generator metrics: {err}") from err


def _row(name: str, scores: dict) -> str:
    nlg, ce = scores["nlg"], scores["clinical"]
    cells = [_fmt(nlg.get(c)) for c in NLG_COLUMNS]
    cells += [_fmt(ce["macro"][k]) for k in ("precision", "recall", "f1")] + [_fmt(ce["micro"]["f1"])]
    return f"| {name} | " + " | ".join(cells) + " |"


def metrics_table(runs: Mapping[str, str | Path]) -> str:
    """Markdown table of NLG and clinical-efficacy metrics, generators then the trivial baseline.

    Args:
        runs: display name -> generator folder.

    Raises:
        ValueError: the generators were evaluated on different volumes or baselines.
    """
    if not runs:
        raise ValueError("metrics_table: no generators")
    data = {name: _read(folder) for name, folder in runs.items()}
    first = next(iter(data.values()))
    for name, m in data.items():
        same = (m["n_train"], m["n_eval"], m["trivial_baseline_report"]) == (
            first["n_train"], first["n_eval"], first["trivial_baseline_report"])
        if not same:
            raise ValueError(f"{runs[name]}: evaluated on other volumes than {next(iter(runs.values()))}")
    head = ["generator", *NLG_COLUMNS, "CE macro P", "CE macro R", "CE macro F1", "CE micro F1"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    lines += [_row(name, m["model"]) for name, m in data.items()]
    lines.append(_row("trivial baseline (most common report)", first["trivial_baseline"]))
    nlg = first["model"]["nlg"]
    meteor = "n/a (no Java)" if nlg.get("METEOR") is None else "pycocoevalcap 1.5"
    note = (f"{first['n_eval']} evaluation volumes, {first['n_train']} training volumes; "
            f"tokenizer {nlg.get('tokenizer')}; METEOR {meteor}.")
    return "\n".join(lines) + "\n\n" + note


def examples(folder: str | Path, n: int = 2, max_chars: int = 600) -> str:
    """The first ``n`` generated reports of a generator next to their references (Markdown)."""
    path = Path(folder) / "samples.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines()[:n]]
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read samples: {err}") from err

    def cut(text: str) -> str:
        return text if len(text) <= max_chars else text[:max_chars] + " [...]"

    blocks = [f"**{r['id']}**\n\n- reference: {cut(r['reference'])}\n- generated: {cut(r['generated'])}"
              for r in rows]
    return "\n\n".join(blocks)
