"""The RAD-ChestCT -> CT-RATE label mapping (16 labels evaluated)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ctxray.data.radchest_labels import load_radchest_mapping, map_radchest_rows, read_radchest_label_csv
from ctxray.labels import CT_RATE_LABELS

# the 84 RAD-ChestCT abnormality columns (Draelos et al. 2021), as in the public label CSVs
RAD_COLUMNS = (
    "air_trapping airspace_disease aneurysm arthritis aspiration atelectasis atherosclerosis bandlike_or_linear "
    "breast_implant breast_surgery bronchial_wall_thickening bronchiectasis bronchiolectasis bronchiolitis "
    "bronchitis cabg calcification cancer cardiomegaly catheter_or_port cavitation chest_tube clip congestion "
    "consolidation coronary_artery_disease cyst debris deformity density dilation_or_ectasia distention emphysema "
    "fibrosis fracture gi_tube granuloma groundglass hardware heart_failure heart_valve_replacement hemothorax "
    "hernia honeycombing infection infiltrate inflammation interstitial_lung_disease lesion lucency lung_resection "
    "lymphadenopathy mass mucous_plugging nodule nodulegr1cm opacity other_path pacemaker_or_defib "
    "pericardial_effusion pericardial_thickening plaque pleural_effusion pleural_thickening pneumonia pneumonitis "
    "pneumothorax postsurgical pulmonary_edema reticulation scarring scattered_calc scattered_nod secretion "
    "septal_thickening soft_tissue staple stent sternotomy suture tracheal_tube transplant tree_in_bud tuberculosis"
).split()


def test_packaged_mapping_has_16_labels_and_real_columns():
    assert len(RAD_COLUMNS) == 84
    m = load_radchest_mapping()
    assert len(m.mapping) == 16
    assert set(m.unmapped) == {"Medical material", "Mosaic attenuation pattern"}
    assert set(m.mapping) | set(m.unmapped) == set(CT_RATE_LABELS)
    assert set(m.source_columns) <= set(RAD_COLUMNS)
    assert m.mapping["Lymphadenopathy"] == ("lymphadenopathy",)
    assert m.mapping["Arterial wall calcification"] == m.mapping["Coronary artery wall calcification"]


def _row(rid: str, positives: set[str]) -> dict[str, str]:
    return {"NoteAcc_DEID": rid, **{c: ("1.0" if c in positives else "0.0") for c in RAD_COLUMNS}}


def test_mapping_values():
    ids, y = map_radchest_rows([_row("tst1", {"calcification", "nodule", "catheter_or_port"}), _row("tst2", set())])
    assert ids == ["tst1", "tst2"] and y.shape == (2, 18)
    col = {n: CT_RATE_LABELS.index(n) for n in CT_RATE_LABELS}
    for name in ("Arterial wall calcification", "Coronary artery wall calcification", "Lung nodule"):
        assert y[0, col[name]] == 1.0
    assert np.isnan(y[:, col["Medical material"]]).all()  # devices are not mapped, even when present
    assert np.isnan(y[:, col["Mosaic attenuation pattern"]]).all()
    assert np.nansum(y[0]) == 3 and np.nansum(y[1]) == 0
    assert np.isfinite(y[1]).sum() == 16


def test_csv_reader_and_errors(tmp_path):
    path = tmp_path / "imgtest.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["NoteAcc_DEID"] + RAD_COLUMNS)
        w.writeheader()
        w.writerow(_row("tst9", {"lymphadenopathy"}))
    ids, y = read_radchest_label_csv(path)
    assert ids == ["tst9"] and y[0, CT_RATE_LABELS.index("Lymphadenopathy")] == 1.0
    bad = tmp_path / "bad.csv"
    bad.write_text("NoteAcc_DEID,nodule\ntst1,1\n")
    with pytest.raises(ValueError, match="bad.csv.*lack columns"):
        read_radchest_label_csv(bad)
    wrong = tmp_path / "map.json"
    wrong.write_text(json.dumps({"mapping": {"Lung nodules": ["nodule"]}}))
    with pytest.raises(ValueError, match="not CT-RATE label names"):
        load_radchest_mapping(wrong)
