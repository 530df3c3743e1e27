import json

import pytest

from ctxray.labels import CT_RATE_LABELS, load_labels

EXPECTED = [
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
    "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
    "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
    "Interlobular septal thickening",
]


def test_ct_rate_names_exact_and_ordered():
    assert CT_RATE_LABELS == EXPECTED


def test_prompts_fill_templates():
    labels = load_labels()
    pos, neg = labels.prompts("Pleural effusion")
    assert pos and neg and len(pos) == len(neg)
    assert all("pleural effusion" in p or "pleural space" in p for p in pos)
    assert not set(pos) & set(neg)


def test_xray_visible_subset_excludes_ct_only_findings():
    vis = load_labels().xray_visible_names
    assert "Cardiomegaly" in vis and "Pleural effusion" in vis
    for ct_only in ["Coronary artery wall calcification", "Mosaic attenuation pattern",
                    "Interlobular septal thickening"]:
        assert ct_only not in vis


def test_custom_label_file_and_errors(tmp_path):
    good = {"prompt_templates": {"positive": ["has {}"], "negative": ["no {}"]},
            "labels": [{"name": "A", "phrases": ["a thing"]}]}
    p = tmp_path / "l.json"
    p.write_text(json.dumps(good))
    ls = load_labels(str(p))
    assert ls.names == ["A"] and ls.prompts("A") == (["has a thing"], ["no a thing"])
    bad = dict(good, prompt_templates={"positive": ["oops"], "negative": ["no {}"]})
    p.write_text(json.dumps(bad))
    load_labels.cache_clear()
    with pytest.raises(ValueError, match="placeholder"):
        load_labels(str(p))
    with pytest.raises(KeyError):
        load_labels().index("Not a label")
