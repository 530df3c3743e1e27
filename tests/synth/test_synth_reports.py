"""Reports agree with labels (negation-aware), label statistics look like CT-RATE's."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from ctxray.data.text import report_text
from ctxray.labels import load_labels
from ctxray.synth.anatomy import sample_anatomy
from ctxray.synth.atlas import Atlas
from ctxray.synth.findings import HEALTHY_SHARE, build_lesions, sample_labels
from ctxray.synth.reports import ct_report, xray_report

# Our own keyword list (independent of the generator's phrasing tables).
KEYWORDS = {
    "Medical material": r"pacemaker|catheter|sternotomy|\bport\b",
    "Arterial wall calcification": r"aort\w*.{0,20}calcif|atherosclero",
    "Cardiomegaly": r"cardiomegaly|heart is enlarged|enlarged heart|cardiac enlargement",
    "Pericardial effusion": r"pericardial (effusion|fluid)",
    "Coronary artery wall calcification": r"coronary",
    "Hiatal hernia": r"hiat\w* hernia",
    "Lymphadenopathy": r"lymphadenopathy|enlarged lymph node|lymph nodes? .{0,30}enlarged",
    "Emphysema": r"emphysem",
    "Atelectasis": r"atelecta",
    "Lung nodule": r"nodul",
    "Lung opacity": r"opacit|ground.glass",
    "Pulmonary fibrotic sequela": r"fibro",
    "Pleural effusion": r"pleural (effusion|fluid)",
    "Mosaic attenuation pattern": r"mosaic",
    "Peribronchial thickening": r"peribronchial|bronchial wall thickening",
    "Consolidation": r"consolidat",
    "Bronchiectasis": r"bronchiecta",
    "Interlobular septal thickening": r"septal thickening",
}
NEGATION = re.compile(r"\b(no|not|without|negative for|free of|absent)\b", re.IGNORECASE)


def stated(text: str, label: str) -> tuple[bool, bool]:
    """(stated as present, mentioned at all) for one label, sentence by sentence."""
    present = mentioned = False
    for sentence in re.split(r"[.;]\s*", text):
        if re.search(KEYWORDS[label], sentence, re.IGNORECASE):
            mentioned = True
            present |= not NEGATION.search(sentence)
    return present, mentioned


def test_checker_itself() -> None:
    assert stated("There is a 6 mm nodule in the right lower lobe.", "Lung nodule") == (True, True)
    assert stated("No pulmonary nodule was detected.", "Lung nodule") == (False, True)
    assert stated("Heart size is normal.", "Cardiomegaly") == (False, False)


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("split,long", [("train", "train"), ("valid", "validation")])
def test_ct_reports_agree_with_labels(tiny_world: Path, split: str, long: str) -> None:
    ds = tiny_world / "ct-rate" / "dataset"
    reports = {r["VolumeName"]: r for r in _csv(ds / "radiology_text_reports" / f"{long}_reports.csv")}
    for row in _csv(ds / "multi_abnormality_labels" / f"{split}_predicted_labels.csv"):
        rep = reports[row["VolumeName"]]
        text = report_text(rep["Findings_EN"], rep["Impressions_EN"])
        for label in load_labels().names:
            present, _ = stated(text, label)
            assert present == (row[label] == "1"), f"{row['VolumeName']} {label}={row[label]}: {text}"


def test_many_generated_reports_agree_with_labels() -> None:
    names = load_labels().names
    for i in range(60):
        rng = np.random.default_rng([99, i])
        anatomy = sample_anatomy(rng)
        labels, _ = sample_labels(rng)
        lesions = build_lesions(anatomy, labels, rng, Atlas(anatomy))
        text = report_text(*ct_report(lesions, labels, rng))
        for label in names:
            assert stated(text, label)[0] == bool(labels[label]), f"{label}={labels[label]}: {text}"
        xtext = xray_report(lesions, labels, rng)
        for lab in load_labels().labels:
            present, mentioned = stated(xtext, lab.name)
            if lab.xray_visible:
                assert present == bool(labels[lab.name]), f"X-ray {lab.name}={labels[lab.name]}: {xtext}"
            else:
                assert not mentioned, f"X-ray report mentions CT-only {lab.name}: {xtext}"


def test_reports_carry_sizes_and_laterality() -> None:
    labels = {n: 0 for n in load_labels().names}
    labels.update({"Lung nodule": 1, "Pleural effusion": 1})
    anatomy = sample_anatomy(np.random.default_rng(4))
    lesions = build_lesions(anatomy, labels, np.random.default_rng(4), Atlas(anatomy))
    findings, _ = ct_report(lesions, labels, np.random.default_rng(0))
    for les in lesions:
        assert les.laterality in findings or "bilateral" in findings
        assert f"{les.size_mm:.0f} mm" in findings or f"{les.size_mm:.1f} mm" in findings


def test_normal_reports_are_near_identical(tiny_world: Path) -> None:
    names = load_labels().names
    labels = _csv(tiny_world / "ct-rate" / "dataset" / "multi_abnormality_labels" / "train_predicted_labels.csv")
    reports = {r["VolumeName"]: r for r in
               _csv(tiny_world / "ct-rate" / "dataset" / "radiology_text_reports" / "train_reports.csv")}
    normal = [report_text(reports[r["VolumeName"]]["Findings_EN"], reports[r["VolumeName"]]["Impressions_EN"])
              for r in labels if all(r[n] == "0" for n in names)]
    abnormal = [report_text(reports[r["VolumeName"]]["Findings_EN"], reports[r["VolumeName"]]["Impressions_EN"])
                for r in labels if any(r[n] == "1" for n in names)]
    assert len(normal) >= 2 and len(abnormal) >= 2

    def jaccard(a: str, b: str) -> float:
        x, y = set(a.lower().split()), set(b.lower().split())
        return len(x & y) / len(x | y)

    normal_sim = np.mean([jaccard(a, b) for i, a in enumerate(normal) for b in normal[i + 1:]])
    abnormal_sim = np.mean([jaccard(a, b) for i, a in enumerate(abnormal) for b in abnormal[i + 1:]])
    assert normal_sim > 0.8 and normal_sim > abnormal_sim + 0.1


def test_prevalence_and_co_occurrence() -> None:
    rng = np.random.default_rng(2024)
    names = load_labels().names
    y = np.array([[v for v in sample_labels(rng)[0].values()] for _ in range(6000)], dtype=float)
    for j, label in enumerate(load_labels().labels):
        assert abs(y[:, j].mean() - label.prevalence) < 0.035, f"{label.name}: {y[:, j].mean():.3f}"
    normal = (y.sum(axis=1) == 0).mean()
    assert HEALTHY_SHARE <= normal <= 0.4

    def col(name: str) -> np.ndarray:
        return y[:, names.index(name)]

    assert np.corrcoef(col("Arterial wall calcification"), col("Coronary artery wall calcification"))[0, 1] > 0.3
    eff = col("Pleural effusion") == 1
    assert col("Atelectasis")[eff].mean() > col("Atelectasis")[~eff].mean() + 0.2
    emph = col("Emphysema") == 1
    assert col("Lung nodule")[emph].mean() > col("Lung nodule")[~emph].mean() + 0.05
