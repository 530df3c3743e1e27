"""Which abnormalities a synthetic patient has, and the lesions that render them.

Labels come from a small latent model: age, smoking, fluid overload, infection, chronic fibrosis
and a device propensity raise the log-odds of the findings they cause, and some findings raise
others (effusion -> atelectasis, emphysema -> nodule). A share of patients is drawn healthy. Each
label's intercept is calibrated once by bisection so the marginal prevalence matches CT-RATE's
validation prevalence from ``labels.json``; co-occurrence then follows from the shared causes.

The ``independent`` mode (preset ``pointing``) draws every label on its own with the same marginal
prevalence and no healthy share, so that no label carries information about another: the world on which a
supervised classifier has to find each finding's own lesion (issue 14). ``visible_nodules`` makes a
patient's nodules the X-ray gallery's (twice the CT size, at least 12 mm).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ctxray.labels import load_labels
from ctxray.synth import lesions as lc
from ctxray.synth import lesions_lung as ll
from ctxray.synth.anatomy import Anatomy
from ctxray.synth.atlas import Atlas
from ctxray.synth.lesions import Builder, Lesion
from ctxray.synth.presets import Findings

HEALTHY_SHARE = 0.2
# nodules a radiograph can show (the X-ray gallery's; also the CT nodules of a "visible" preset)
MIN_VISIBLE_NODULE_MM = 12.0
NODULE_SIZE_SCALE = 2.0
LATENTS = ("age", "smoking", "fluid", "infection", "fibrosis", "device")
# label -> weights on the latents, in LATENTS order
WEIGHTS: dict[str, tuple[float, ...]] = {
    "Medical material": (0.4, 0, 0.6, 0.2, 0, 1.8),
    "Arterial wall calcification": (1.8, 0.5, 0, 0, 0, 0),
    "Cardiomegaly": (0.6, 0, 1.4, 0, 0, 0.4),
    "Pericardial effusion": (0.2, 0, 1.3, 0.3, 0, 0),
    "Coronary artery wall calcification": (1.7, 0.6, 0, 0, 0, 0.3),
    "Hiatal hernia": (1.0, 0, 0, 0, 0, 0),
    "Lymphadenopathy": (0.3, 0.2, 0.2, 0.8, 0.6, 0),
    "Emphysema": (0.6, 2.0, 0, 0, 0, 0),
    "Atelectasis": (0.3, 0, 0.8, 0.8, 0, 0.3),
    "Lung nodule": (0.5, 0.6, 0, 0.2, 0.2, 0),
    "Lung opacity": (0.2, 0.2, 0.5, 1.4, 0.5, 0),
    "Pulmonary fibrotic sequela": (0.8, 0.3, 0, 0.3, 1.4, 0),
    "Pleural effusion": (0.4, 0, 1.6, 0.6, 0, 0.3),
    "Mosaic attenuation pattern": (0, 0.4, 0, 0.5, 0.7, 0),
    "Peribronchial thickening": (0, 0.8, 0, 0.9, 0.3, 0),
    "Consolidation": (0.2, 0, 0.3, 1.8, 0, 0.2),
    "Bronchiectasis": (0.4, 0.2, 0, 0.4, 1.3, 0),
    "Interlobular septal thickening": (0.2, 0, 1.2, 0.2, 1.0, 0),
}
# (cause, effect, log-odds added to the effect when the cause is present); causes precede effects
# in SAMPLING_ORDER.
LINKS = (("Pleural effusion", "Atelectasis", 1.8), ("Emphysema", "Lung nodule", 0.8),
         ("Consolidation", "Lung opacity", 1.2), ("Cardiomegaly", "Pericardial effusion", 0.8),
         ("Arterial wall calcification", "Coronary artery wall calcification", 1.6))

BUILDERS: dict[str, Builder] = {
    "Medical material": lc.medical_material,
    "Arterial wall calcification": lc.arterial_wall_calcification,
    "Cardiomegaly": lc.cardiomegaly,
    "Pericardial effusion": lc.pericardial_effusion,
    "Coronary artery wall calcification": lc.coronary_artery_wall_calcification,
    "Hiatal hernia": lc.hiatal_hernia,
    "Lymphadenopathy": lc.lymphadenopathy,
    "Emphysema": ll.emphysema,
    "Atelectasis": ll.atelectasis,
    "Lung nodule": ll.lung_nodule,
    "Lung opacity": ll.lung_opacity,
    "Pulmonary fibrotic sequela": ll.pulmonary_fibrotic_sequela,
    "Pleural effusion": ll.pleural_effusion,
    "Mosaic attenuation pattern": ll.mosaic_attenuation_pattern,
    "Peribronchial thickening": ll.peribronchial_thickening,
    "Consolidation": ll.consolidation,
    "Bronchiectasis": ll.bronchiectasis,
    "Interlobular septal thickening": ll.interlobular_septal_thickening,
}


def sampling_order() -> list[str]:
    """Label names with every cause of :data:`LINKS` before its effect (also the painting order)."""
    names = load_labels().names
    first = ["Pleural effusion", "Emphysema", "Consolidation", "Cardiomegaly", "Arterial wall calcification"]
    return first + [n for n in names if n not in first]


def _latents(rng: np.random.Generator, n: int) -> np.ndarray:
    """``(n, 6)`` latent causes; age is standardised from a 20-90 year distribution."""
    age = (np.clip(rng.normal(58, 14, n), 20, 90) - 58) / 14
    smoking = (rng.random(n) < 0.35).astype(float) * 1.5 - 0.5
    rest = rng.normal(0, 1, (n, 4))
    return np.column_stack([age, smoking, rest])


def visible_nodules(anatomy: Anatomy) -> Anatomy:
    """``anatomy`` with the nodules a radiograph can show (twice the CT size, at least 12 mm); in place."""
    anatomy.extra["min_nodule_mm"] = MIN_VISIBLE_NODULE_MM
    anatomy.extra["nodule_size_scale"] = NODULE_SIZE_SCALE
    return anatomy


def marginal_prevalence(name: str) -> float:
    """The overall prevalence the linked model is calibrated to (healthy share included)."""
    label = next(x for x in load_labels().labels if x.name == name)
    return min((label.prevalence or 0.1) / (1 - HEALTHY_SHARE), 0.95) * (1 - HEALTHY_SHARE)


@lru_cache(maxsize=1)
def intercepts() -> dict[str, float]:
    """Per-label intercepts so that marginal prevalences match ``labels.json`` (fixed Monte-Carlo draw)."""
    rng = np.random.default_rng(12345)
    z = _latents(rng, 40000)
    u = rng.random((40000, len(WEIGHTS)))
    present: dict[str, np.ndarray] = {}
    out: dict[str, float] = {}
    labels = {label.name: label for label in load_labels().labels}
    for j, name in enumerate(sampling_order()):
        target = min((labels[name].prevalence or 0.1) / (1 - HEALTHY_SHARE), 0.95)
        base = z @ np.asarray(WEIGHTS[name]) + sum(w * present[c] for c, e, w in LINKS if e == name)
        lo, hi = -12.0, 8.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(base + mid)))) < target else (lo, mid)
        out[name] = (lo + hi) / 2
        present[name] = (u[:, j] < 1 / (1 + np.exp(-(base + out[name])))).astype(float)
    return out


def sample_labels(rng: np.random.Generator, findings: Findings = "linked") -> tuple[dict[str, int], float]:
    """Draw one patient's 18 labels.

    Args:
        findings: ``"linked"`` (latent causes, links, a healthy share) or ``"independent"`` (each label a
            Bernoulli draw of :func:`marginal_prevalence`).

    Returns:
        (labels in ``labels.json`` order as name -> 0/1, age in years).
    """
    z = _latents(rng, 1)[0]
    age = float(np.clip(58 + 14 * z[0], 20, 90))
    names = load_labels().names
    if findings == "independent":
        u = rng.random(len(names))
        return {n: int(u[j] < marginal_prevalence(n)) for j, n in enumerate(names)}, age
    if findings != "linked":
        raise ValueError(f"sample_labels: findings must be 'linked' or 'independent'; got {findings!r}")
    if rng.random() < HEALTHY_SHARE:
        # healthy patients are younger on average; draw the remaining randomness to keep streams aligned
        rng.random(len(names))
        return {n: 0 for n in names}, float(np.clip(age - 12, 20, 90))
    b = intercepts()
    present: dict[str, int] = {}
    u = rng.random(len(names))
    for j, name in enumerate(sampling_order()):
        logit = b[name] + float(z @ np.asarray(WEIGHTS[name]))
        logit += sum(w for c, e, w in LINKS if e == name and present.get(c))
        present[name] = int(u[j] < 1 / (1 + np.exp(-logit)))
    return {n: present[n] for n in names}, age


def build_lesions(anatomy: Anatomy, labels: dict[str, int], rng: np.random.Generator,
                  atlas: Atlas | None = None) -> list[Lesion]:
    """Lesions for every positive label, in painting order (cardiomegaly before pericardial fluid...).

    Raises:
        KeyError: a label without a builder (a label file that is not CT-RATE's 18).
    """
    if not any(labels.get(name) for name in sampling_order()):
        return []  # a healthy patient: no atlas to paint (it draws no random numbers, so the streams are unchanged)
    atlas = atlas or Atlas(anatomy)
    out: list[Lesion] = []
    for name in sampling_order():
        if labels.get(name):
            new = BUILDERS[name](anatomy, atlas, rng, labels)
            for lesion in new:
                atlas.occupy(lesion.shapes)
            out.extend(new)
    return out
