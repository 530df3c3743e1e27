"""Radiology reports written from the ground truth: CT-RATE-style CT reports and short X-ray reports.

CT reports walk the chest region by region like CT-RATE's (airways, mediastinum, heart, vessels,
nodes, oesophagus, lungs, pleura, abdomen, bones): a positive finding gets a sentence with its
size, location and laterality drawn from several templates and synonyms; a normal region gets an
explicit negation. Negations and positive findings never share a sentence. Normal patients draw
from few, mostly fixed variants, so their reports are near-identical, as in real data.
"""

from __future__ import annotations

import numpy as np

from ctxray.labels import load_labels
from ctxray.synth.lesions import Lesion

Rng = np.random.Generator


def _pick(rng: Rng, options: list[str], p_first: float = 0.0) -> str:
    """One option; with ``p_first`` the first (canonical) one, else uniformly among all."""
    if p_first and rng.random() < p_first:
        return options[0]
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _where(lesions: list[Lesion]) -> str:
    return _join(sorted({les.location for les in lesions}))


def _mm(x: float) -> str:
    return f"{x:.0f} mm" if x >= 10 else f"{x:.1f} mm".replace(".0 mm", " mm")


# Positive sentences per label: (rng, lesions) -> list of sentences.
def _pos_medical(rng: Rng, les: list[Lesion]) -> list[str]:
    out = []
    for x in les:
        if x.kind == "pacemaker":
            out.append(_pick(rng, [f"A cardiac pacemaker is seen in the {x.location} with its lead extending into "
                                   "the right heart chambers.", f"Pacemaker generator in the {x.location}; the lead "
                                   "terminates in the right ventricle."]))
        elif x.kind == "port catheter":
            out.append(_pick(rng, [f"A port catheter is seen in the {x.location}, its tip in the superior vena cava.",
                                   f"Central venous port catheter in the {x.location} is noted."]))
        else:
            out.append(_pick(rng, ["Sternotomy wires are noted.", "Median sternotomy wires related to previous "
                                   "cardiac surgery are observed."]))
    return out


def _pos_aorta(rng: Rng, les: list[Lesion]) -> list[str]:
    x = les[0]
    return [_pick(rng, [f"Calcified atherosclerotic plaques are observed in the wall of the {x.location}.",
                        f"Atherosclerotic calcifications are present in the {x.location}.",
                        f"Aortic wall calcification is noted along the {x.location}."])]


def _pos_cardiomegaly(rng: Rng, les: list[Lesion]) -> list[str]:
    r = les[0].attrs.get("cardiothoracic_ratio", 0.6)
    return [_pick(rng, [f"The heart is enlarged, with a cardiothoracic ratio of about {r:.2f}.",
                        "Cardiomegaly is present.", f"Cardiac enlargement is noted (cardiothoracic ratio {r:.2f})."])]


def _pos_pericardial(rng: Rng, les: list[Lesion]) -> list[str]:
    x = les[0]
    return [_pick(rng, [f"{_cap(x.attrs['severity'])} pericardial effusion measuring {_mm(x.size_mm)} in thickness "
                        "is seen.", f"Pericardial effusion with a maximal thickness of {_mm(x.size_mm)} is present."])]


def _pos_coronary(rng: Rng, les: list[Lesion]) -> list[str]:
    v = _join(les[0].attrs["vessels"])
    return [_pick(rng, [f"Calcified plaques are seen in the coronary arteries ({v}).",
                        f"Coronary artery wall calcification is present in the {v}."])]


def _pos_hernia(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, ["A sliding hiatal hernia is present.", f"Hiatal hernia measuring {_mm(les[0].size_mm)} is "
                        "seen at the oesophagogastric junction.", "Hiatal hernia is observed."])]


def _pos_nodes(rng: Rng, les: list[Lesion]) -> list[str]:
    out = []
    for x in les:
        out.append(_pick(rng, [f"An enlarged lymph node measuring {_mm(x.size_mm)} in short axis is present at the "
                               f"{x.location}.", f"Lymphadenopathy is seen at the {x.location}, the largest node "
                               f"{_mm(x.size_mm)} in short axis."]))
    return out


def _pos_emphysema(rng: Rng, les: list[Lesion]) -> list[str]:
    x = les[0]
    return [_pick(rng, [f"{_cap(x.attrs['severity'])} {x.kind} is seen in {x.location}.",
                        f"{_cap(x.kind.split()[0])} emphysematous changes are present in {x.location}."])]


def _pos_atelectasis(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, [f"{_cap(x.kind)} is observed in the {x.location}.",
                        f"Atelectatic changes are seen in the {x.location}."]) for x in les]


def _pos_nodule(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, [f"A {_mm(x.size_mm)} {x.kind} is seen in the {x.location}.",
                        f"There is a {x.kind.split()[0]} pulmonary nodule measuring {_mm(x.size_mm)} in the "
                        f"{x.location}.", f"{_cap(x.kind)} of {_mm(x.size_mm)} in the {x.location}."]) for x in les]


def _pos_opacity(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, [f"Ground-glass opacities are present in the {_where(les)}.",
                        f"Patchy ground glass opacity is noted in the {_where(les)}.",
                        f"Increased density areas in the form of ground-glass opacity in the {_where(les)}."])]


def _pos_fibrotic(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, [f"Fibrotic sequelae are seen in the {_where(les)}.",
                        f"Parenchymal fibrotic bands are observed in the {_where(les)}."])]


def _pos_pleural(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, [f"{_cap(x.attrs['severity'])} {x.laterality} pleural effusion measuring {_mm(x.size_mm)} in "
                        "depth is seen.", f"Pleural effusion is present on the {x.laterality}, {_mm(x.size_mm)} at "
                        "its deepest."]) for x in les]


def _pos_mosaic(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, ["A mosaic attenuation pattern is noted in both lungs.",
                        "Mosaic attenuation of the lung parenchyma is observed bilaterally."])]


def _pos_peribronchial(rng: Rng, les: list[Lesion]) -> list[str]:
    x = les[0]
    side = "bilaterally" if x.laterality == "bilateral" else f"in the {x.laterality} lung"
    return [_pick(rng, [f"Peribronchial thickening is present {side}.",
                        f"Bronchial wall thickening is observed {side}."])]


def _pos_consolidation(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, [f"Consolidation with air bronchograms is seen in the {_where(les)}.",
                        f"Consolidated area in the {_where(les)}."])]


def _pos_bronchiectasis(rng: Rng, les: list[Lesion]) -> list[str]:
    x = les[0]
    return [_pick(rng, [f"{_cap(x.kind)} is seen in the {x.location}.",
                        f"Bronchiectatic changes are present in the {x.location}."])]


def _pos_septal(rng: Rng, les: list[Lesion]) -> list[str]:
    return [_pick(rng, ["Interlobular septal thickening is noted at the lung bases.",
                        "Smooth interlobular septal thickening is observed in the subpleural lower zones."])]


POSITIVE = {
    "Medical material": _pos_medical, "Arterial wall calcification": _pos_aorta, "Cardiomegaly": _pos_cardiomegaly,
    "Pericardial effusion": _pos_pericardial, "Coronary artery wall calcification": _pos_coronary,
    "Hiatal hernia": _pos_hernia, "Lymphadenopathy": _pos_nodes, "Emphysema": _pos_emphysema,
    "Atelectasis": _pos_atelectasis, "Lung nodule": _pos_nodule, "Lung opacity": _pos_opacity,
    "Pulmonary fibrotic sequela": _pos_fibrotic, "Pleural effusion": _pos_pleural,
    "Mosaic attenuation pattern": _pos_mosaic, "Peribronchial thickening": _pos_peribronchial,
    "Consolidation": _pos_consolidation, "Bronchiectasis": _pos_bronchiectasis,
    "Interlobular septal thickening": _pos_septal,
}

# Report regions in CT-RATE order: (labels covered, negation variants when all are absent, or None).
REGIONS: list[tuple[tuple[str, ...], list[str] | None]] = [
    ((), ["Trachea and both main bronchi are in normal position and their lumens are open."]),
    (("Medical material",), None),
    ((), ["Mediastinal structures were evaluated as suboptimal since the examination was unenhanced."]),
    (("Cardiomegaly",), ["Heart contour and size are normal.", "Heart size is within normal limits."]),
    (("Pericardial effusion",), ["No pericardial effusion or thickening was detected.",
                                 "There is no pericardial effusion."]),
    (("Arterial wall calcification",), ["No calcified atherosclerotic plaque is seen in the thoracic aorta."]),
    (("Coronary artery wall calcification",), ["No calcification is seen in the coronary arteries."]),
    (("Lymphadenopathy",), ["No enlarged lymph nodes were detected in the mediastinum or hila.",
                            "No lymph node in pathological size or appearance was detected in the mediastinum."]),
    (("Hiatal hernia",), ["No hiatal hernia is seen; the oesophagus is normal in calibre."]),
    ((), ["When examined in the lung parenchyma window:"]),
    (("Emphysema",), ["No emphysema."]),
    (("Lung nodule",), ["No pulmonary nodule was detected.", "No nodule or mass was found in either lung."]),
    (("Lung opacity", "Consolidation"), ["No consolidation or ground-glass opacity is seen in either lung.",
                                         "No infiltrative consolidation or opacity was detected in both lungs."]),
    (("Atelectasis",), ["No atelectasis."]),
    (("Pulmonary fibrotic sequela", "Mosaic attenuation pattern", "Interlobular septal thickening"), None),
    (("Peribronchial thickening", "Bronchiectasis"), ["No bronchiectasis or peribronchial thickening is seen."]),
    (("Pleural effusion",), ["No pleural effusion or thickening was detected.",
                             "There is no pleural effusion on either side."]),
    ((), ["Upper abdominal organs included in the sections are normal.",
          "The upper abdominal organs within the imaging field are unremarkable."]),
    ((), ["No lytic-destructive lesion was detected in the bone structures within the sections."]),
]

IMPRESSION_NORMAL = ["No significant pathology was detected in the thorax.", "Normal chest CT."]


def ct_report(lesions: list[Lesion], labels: dict[str, int], rng: Rng) -> tuple[str, str]:
    """Findings and Impression of a CT report.

    Args:
        lesions: the patient's lesions (every positive label has at least one).
        labels: name -> 0/1.

    Returns:
        ``(findings, impression)``.
    """
    by_label: dict[str, list[Lesion]] = {}
    for les in lesions:
        by_label.setdefault(les.label, []).append(les)
    findings: list[str] = []
    for covered, negations in REGIONS:
        positives = [name for name in covered if labels.get(name)]
        for name in positives:
            findings += POSITIVE[name](rng, by_label[name])
        if negations and not positives:
            findings.append(_pick(rng, negations, p_first=0.85))
    impression = [_impression_line(rng, name, by_label[name]) for name in load_labels().names if labels.get(name)]
    return " ".join(findings), " ".join(impression) if impression else _pick(rng, IMPRESSION_NORMAL, 0.9)


def _impression_line(rng: Rng, name: str, les: list[Lesion]) -> str:
    loc = _where(les)
    lines = {
        "Medical material": "Postoperative or device-related changes (" + _join(sorted({x.kind for x in les})) + ").",
        "Arterial wall calcification": "Atherosclerotic changes of the thoracic aorta.",
        "Cardiomegaly": "Cardiomegaly.",
        "Pericardial effusion": "Pericardial effusion.",
        "Coronary artery wall calcification": "Coronary artery calcification.",
        "Hiatal hernia": "Hiatal hernia.",
        "Lymphadenopathy": "Mediastinal lymphadenopathy.",
        "Emphysema": "Emphysema.",
        "Atelectasis": f"Atelectasis in the {loc}.",
        "Lung nodule": f"Pulmonary nodule{'s' if len(les) > 1 else ''} in the {loc}; follow-up is recommended.",
        "Lung opacity": f"Ground-glass opacities in the {loc}.",
        "Pulmonary fibrotic sequela": "Fibrotic sequelae.",
        "Pleural effusion": f"{_cap(_join(sorted({x.laterality for x in les})))} pleural effusion.",
        "Mosaic attenuation pattern": "Mosaic attenuation pattern.",
        "Peribronchial thickening": "Peribronchial thickening.",
        "Consolidation": f"Consolidation in the {loc}, compatible with pneumonia in the appropriate clinical setting.",
        "Bronchiectasis": "Bronchiectasis.",
        "Interlobular septal thickening": "Interlobular septal thickening.",
    }
    return lines[name]


def _zone(location: str) -> str:
    """CT lobe to radiograph zone words."""
    side = "right" if "right" in location else "left" if "left" in location else ""
    level = "lower" if "lower" in location else "upper" if "upper" in location else "mid"
    return f"{side} {level} zone".strip()


def xray_report(lesions: list[Lesion], labels: dict[str, int], rng: Rng) -> str:
    """A short frontal-radiograph report mentioning only findings a radiograph shows.

    Returns:
        Findings then Impression, one string.
    """
    visible = set(load_labels().xray_visible_names)
    les = {n: [x for x in lesions if x.label == n] for n in visible if labels.get(n)}
    s: list[str] = [_pick(rng, ["PA view of the chest.", "Frontal chest radiograph."], 0.7)]
    s += [f"{_cap(x.kind)} {'project' if x.kind.endswith('s') else 'projects'} over the "
          f"{x.laterality if x.laterality != 'midline' else 'mid'} chest." for x in les.get("Medical material", [])]
    normal_heart = ["Heart size is normal.", "The cardiac silhouette is normal."]
    s.append("The heart is enlarged." if "Cardiomegaly" in les else _pick(rng, normal_heart, 0.8))
    if "Hiatal hernia" in les:
        s.append("A retrocardiac soft tissue density with an air-fluid level represents a hiatal hernia.")
    if "Emphysema" in les:
        s.append("The lungs are hyperinflated with emphysematous lucency in the upper zones.")
    for name, word in (("Consolidation", "consolidation"), ("Lung opacity", "hazy opacity"),
                       ("Atelectasis", "linear atelectasis")):
        for x in les.get(name, []):
            s.append(f"There is {word} in the {_zone(x.location)}.")
    for x in les.get("Lung nodule", []):
        s.append(f"A {_mm(x.size_mm)} nodule is seen in the {_zone(x.location)}.")
    for x in les.get("Pleural effusion", []):
        s.append(f"{_cap(x.attrs['severity'])} {x.laterality} pleural effusion blunting the costophrenic angle.")
    if not any(n in les for n in ("Consolidation", "Lung opacity", "Atelectasis", "Lung nodule")):
        s.append(_pick(rng, ["The lungs are clear without focal consolidation.", "No focal consolidation."], 0.8))
    if "Pleural effusion" not in les:
        s.append(_pick(rng, ["No pleural effusion or pneumothorax.", "No pleural effusion."], 0.8))
    names = [n for n in load_labels().names if n in les]
    impression = ("Impression: " + "; ".join(n.lower() for n in names) + ".") if names else \
        _pick(rng, ["Impression: no acute cardiopulmonary process.", "Impression: normal chest."], 0.85)
    return " ".join(s + [impression])
