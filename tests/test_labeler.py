"""The report labeler: a sentence table with expected outputs, prompt consistency, matrix and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctxray.labeler import find_mentions, label_matrix, label_names, label_report, load_rules
from ctxray.labels import load_labels

# (text, label set, {label: expected status}); labels not listed must be "absent"
TABLE = [
    # negation: pre-cues, lists, post-cues, clause scope
    ("No pleural effusion.", "xray", {"Pleural effusion": "negative"}),
    ("No pleural effusion or pneumothorax.", "xray", {"Pleural effusion": "negative", "Pneumothorax": "negative"}),
    ("No focal consolidation, pleural effusion, or pneumothorax.", "xray",
     {"Consolidation": "negative", "Pleural effusion": "negative", "Pneumothorax": "negative"}),
    ("The lungs are free of consolidation.", "xray", {"Consolidation": "negative"}),
    ("The lungs are clear.", "xray",
     {"Consolidation": "negative", "Lung opacity": "negative", "Pneumonia": "negative"}),
    ("Negative for pneumothorax.", "xray", {"Pneumothorax": "negative"}),
    ("Pneumothorax is not seen.", "xray", {"Pneumothorax": "negative"}),
    ("A pneumothorax was not identified.", "xray", {"Pneumothorax": "negative"}),
    ("The previously seen effusion has resolved.", "xray", {"Pleural effusion": "negative"}),
    ("Without evidence of fracture.", "xray", {"Fracture": "negative"}),
    ("No effusion, but there is left basilar atelectasis.", "xray",
     {"Pleural effusion": "negative", "Atelectasis": "positive"}),
    ("Mild cardiomegaly. No edema.", "xray", {"Cardiomegaly": "positive", "Edema": "negative"}),
    ("Cardiomegaly, effusion is not seen.", "xray", {"Cardiomegaly": "positive", "Pleural effusion": "negative"}),
    ("No opacity to suggest pneumonia.", "xray", {"Lung opacity": "negative", "Pneumonia": "negative"}),
    ("No pneumothorax, possible small effusion.", "xray",
     {"Pneumothorax": "negative", "Pleural effusion": "uncertain"}),
    # uncertainty
    ("Possible small nodule in the right upper lobe.", "xray", {"Nodule/mass": "uncertain"}),
    ("Findings may represent atelectasis.", "xray", {"Atelectasis": "uncertain"}),
    ("Pneumonia cannot be excluded.", "xray", {"Pneumonia": "uncertain"}),
    ("Cannot exclude a small pneumothorax.", "xray", {"Pneumothorax": "uncertain"}),
    ("Opacity suggestive of consolidation.", "xray", {"Lung opacity": "positive", "Consolidation": "uncertain"}),
    ("Atelectasis versus pneumonia.", "xray", {"Atelectasis": "uncertain", "Pneumonia": "uncertain"}),
    # pseudo-negation: the finding is present
    ("No change in the moderate cardiomegaly.", "xray", {"Cardiomegaly": "positive"}),
    # synonyms and normal statements
    ("The heart is mildly enlarged.", "xray", {"Cardiomegaly": "positive"}),
    ("The heart is not enlarged.", "xray", {"Cardiomegaly": "negative"}),
    ("Heart size is within normal limits.", "xray", {"Cardiomegaly": "negative"}),
    ("Calcified granuloma in the left lung.", "xray", {"Granuloma": "positive"}),
    ("Left PICC line tip in the SVC.", "xray", {"Support devices": "positive"}),
    ("Subcutaneous emphysema along the chest wall.", "xray", {}),
    ("Small pericardial effusion.", "xray", {}),
    ("Hyperinflated lungs consistent with COPD.", "xray", {"Emphysema": "positive"}),
    # CT label set
    ("Calcific atheroma plaques are observed in the aorta and coronary arteries.", "ct",
     {"Arterial wall calcification": "positive", "Coronary artery wall calcification": "positive"}),
    ("Calcified plaques in the coronary arteries.", "ct", {"Coronary artery wall calcification": "positive"}),
    ("No pleural or pericardial effusion was detected.", "ct",
     {"Pleural effusion": "negative", "Pericardial effusion": "negative"}),
    ("Minimal pericardial effusion.", "ct", {"Pericardial effusion": "positive"}),
    ("No lymph node in pathological size was detected in the mediastinum.", "ct", {"Lymphadenopathy": "negative"}),
    ("Ground-glass opacities in the right lower lobe, but no consolidation.", "ct",
     {"Lung opacity": "positive", "Consolidation": "negative"}),
    ("Centrilobular and paraseptal emphysematous changes in both lungs.", "ct", {"Emphysema": "positive"}),
    ("Interlobular septal thickening and traction bronchiectasis.", "ct",
     {"Interlobular septal thickening": "positive", "Bronchiectasis": "positive"}),
    ("Mosaic attenuation pattern is present.", "ct", {"Mosaic attenuation pattern": "positive"}),
    ("Peribronchial thickening is noted.", "ct", {"Peribronchial thickening": "positive"}),
    ("Fibrotic sequelae in the left upper lobe.", "ct", {"Pulmonary fibrotic sequela": "positive"}),
    ("A 6 mm nodule in the right lower lobe.", "ct", {"Lung nodule": "positive"}),
    ("A nodule in the thyroid gland.", "ct", {}),
    ("Sliding hiatal hernia.", "ct", {"Hiatal hernia": "positive"}),
    ("Cardiac pacemaker in place.", "ct", {"Medical material": "positive"}),
    ("Subsegmental atelectasis in the lower lobes.", "ct", {"Atelectasis": "positive"}),
]


@pytest.mark.parametrize("text,label_set,expected", TABLE, ids=[t[0][:40] for t in TABLE])
def test_sentence_table(text: str, label_set: str, expected: dict[str, str]) -> None:
    got = label_report(text, label_set)
    want = {name: expected.get(name, "absent") for name in label_names(label_set)}
    assert got == want, {k: (got[k], want[k]) for k in want if got[k] != want[k]}


@pytest.mark.parametrize(
    "text,label,side",
    [
        ("Small left pleural effusion.", "Pleural effusion", "left"),
        ("Right lower lobe atelectasis.", "Atelectasis", "right"),
        ("Bilateral pleural effusions.", "Pleural effusion", "bilateral"),
        ("Effusions in both hemithoraces.", "Pleural effusion", "bilateral"),
        ("Cardiomegaly.", "Cardiomegaly", None),
    ],
)
def test_laterality(text: str, label: str, side: str | None) -> None:
    mentions = [m for m in find_mentions(text, "xray") if m.label == label]
    assert len(mentions) == 1 and mentions[0].laterality == side


def test_positive_wins_over_negative_across_sentences() -> None:
    text = "Small left pleural effusion. No right pleural effusion."
    mentions = [m for m in find_mentions(text, "xray") if m.label == "Pleural effusion"]
    assert [(m.status, m.laterality) for m in mentions] == [("positive", "left"), ("negative", "right")]
    assert label_report(text, "xray")["Pleural effusion"] == "positive"


def test_every_ct_prompt_is_read_back() -> None:
    """The zero-shot prompts of labels.json must label as their own label (positive and negative)."""
    labels = load_labels()
    for label in labels.labels:
        pos, neg = labels.prompts(label.name)
        for text, status in [(t, "positive") for t in pos] + [(t, "negative") for t in neg]:
            got = label_report(text, "ct")
            assert got[label.name] == status, (text, got[label.name])
            others = {k: v for k, v in got.items() if k != label.name and v != "absent"}
            assert not others, (text, others)


def test_ct_label_set_is_the_ct_rate_set() -> None:
    assert label_names("ct") == load_labels().names
    assert len(label_names("xray")) == len(set(label_names("xray"))) >= 14


def test_label_matrix_values_and_uncertain_as() -> None:
    texts = ["Possible pneumonia.", "Pneumonia.", "No pneumonia.", ""]
    j = label_names("xray").index("Pneumonia")
    m1 = label_matrix(texts, "xray")
    m0 = label_matrix(texts, "xray", uncertain_as=0.0)
    mn = label_matrix(texts, "xray", uncertain_as=float("nan"))
    assert m1.shape == (4, len(label_names("xray"))) and m1.dtype == np.float32
    assert m1[:, j].tolist() == [1, 1, 0, 0] and m0[:, j].tolist() == [0, 1, 0, 0]
    assert np.isnan(mn[0, j]) and not np.isnan(mn[1:]).any()
    assert m1.sum() == 2  # nothing else fires


def test_unknown_label_set_and_bad_rules_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown label set"):
        label_report("text", "mri")  # type: ignore[arg-type]
    bad = tmp_path / "rules.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="rules.json"):
        load_rules(str(bad))
    from importlib import resources

    data = json.loads(resources.files("ctxray").joinpath("resources/labeler_rules.json").read_text())
    del data["label_sets"]["ct"]["labels"]["Emphysema"]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="Emphysema"):
        load_rules(str(missing))
    data["label_sets"]["ct"]["labels"]["Emphysema"] = {"patterns": ["(unclosed"]}
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="bad pattern"):
        load_rules(str(broken))
