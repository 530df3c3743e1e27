"""CT side of the world: which patients, scans and reconstructions exist, and writing one scan.

Names follow CT-RATE: ``{split}_{patient}_{scan}_{reconstruction}``, e.g. ``train_3_a_2`` is the
second reconstruction of patient 3's first scan. Reconstructions of one scan share the patient,
lesions and report and differ in kernel (noise and sharpness); a second scan of a patient is a
follow-up with the same findings drawn anew (positions and sizes change).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxray.labels import load_labels
from ctxray.synth.anatomy import Anatomy, sample_anatomy
from ctxray.synth.atlas import Atlas
from ctxray.synth.canvas import Grid
from ctxray.synth.findings import build_lesions, sample_labels, visible_nodules
from ctxray.synth.lesions import Lesion
from ctxray.synth.presets import Findings, Nodules, Preset
from ctxray.synth.render import Reconstruction, acquire, paint_patient
from ctxray.synth.reports import ct_report
from ctxray.synth.writers import write_nifti

CT_SPLITS = ("train", "valid")
SPLIT_CODE = {"train": 1, "valid": 2}
SCAN_LETTERS = "abcdefgh"


@dataclass(frozen=True)
class ScanTask:
    """One scan to render: all its reconstructions.

    Args:
        root: the split's volume folder (``.../dataset/train_fixed``).
        split: "train" or "valid".
        patient: patient number (1-based).
        scan: scan index (0 = "a").
        n_recon: reconstructions to write.
        preset: grid sizes.
        seed: world seed.
    """

    root: Path
    split: str
    patient: int
    scan: int
    n_recon: int
    preset: Preset
    seed: int

    def name(self, recon: int) -> str:
        return f"{self.split}_{self.patient}_{SCAN_LETTERS[self.scan]}_{recon + 1}"


def plan_scans(preset: Preset, seed: int, split: str, root: Path) -> list[ScanTask]:
    """Patients, scans and reconstructions adding up to the preset's volume count for ``split``.

    Patient 1 always has two reconstructions of one scan and patient 2 two scans, so per-scan
    grouping is exercised even in the tiny world.
    """
    target = preset.n_train if split == "train" else preset.n_valid
    tasks: list[ScanTask] = []
    total, pid = 0, 0
    while total < target:
        pid += 1
        rng = np.random.default_rng([seed, SPLIT_CODE[split], pid, 0])
        n_scans = 2 if pid == 2 or rng.random() < 0.12 else 1
        for s in range(n_scans):
            n_recon = 2 if (pid == 1 or rng.random() < 0.25) and pid != 2 else 1
            n_recon = min(n_recon, target - total)
            if n_recon <= 0:
                break
            tasks.append(ScanTask(root, split, pid, s, n_recon, preset, seed))
            total += n_recon
    return tasks


def patient(seed: int, split_code: int, pid: int, findings: Findings = "linked",
            nodules: Nodules = "ct") -> tuple[Anatomy, dict[str, int], float]:
    """Anatomy, labels and age of one patient (the same for all the patient's scans).

    Args:
        findings, nodules: the preset's label model and nodule sizes (:class:`ctxray.synth.presets.Preset`).
    """
    rng = np.random.default_rng([seed, split_code, pid])
    anatomy = sample_anatomy(rng)
    if nodules == "visible":
        visible_nodules(anatomy)
    labels, age = sample_labels(rng, findings)
    return anatomy, labels, age


def lesion_record(lesion: Lesion, grid: Grid) -> dict:
    """The ground-truth JSON of one lesion, with its centre in voxels of ``grid`` (D, H, W order)."""
    vox = grid.to_voxel(np.asarray(lesion.centre_mm))
    return {
        "label": lesion.label, "kind": lesion.kind, "location": lesion.location, "laterality": lesion.laterality,
        "center_zyx_vox": [round(float(v), 2) for v in vox],
        "center_mm": [round(float(v), 1) for v in lesion.centre_mm],
        "size_mm": round(float(lesion.size_mm), 1), **{k: v for k, v in lesion.attrs.items()},
    }


def _clinical(labels: dict[str, int], rng: np.random.Generator) -> str:
    if labels.get("Consolidation") or labels.get("Lung opacity"):
        return str(rng.choice(["Fever and cough.", "Suspected pneumonia.", "Not given."]))
    return str(rng.choice(["Not given.", "Not given.", "Shortness of breath.", "Chest pain.", "Follow-up."]))


def _metadata(name: str, grid: Grid, recon: Reconstruction, age: float, female: bool) -> dict[str, object]:
    sz, sy, sx = grid.spacing
    d, h, w = grid.shape
    lps = (-(grid.origin[2] + (w - 1) * sx), -(grid.origin[1] + (h - 1) * sy), grid.origin[0])
    return {
        "VolumeName": f"{name}.nii.gz", "Manufacturer": "SYNTHETIC", "PatientSex": "F" if female else "M",
        "PatientAge": f"{int(age):03d}Y", "ReconstructionDiameter": round(w * sx, 1),
        "ConvolutionKernel": "STANDARD" if recon.kernel == "soft" else "LUNG", "SliceThickness": sz,
        "XYSpacing": f"[{sx}, {sy}]", "ZSpacing": sz, "RescaleIntercept": -1024, "RescaleSlope": 1,
        "NumberofSlices": d, "Rows": h, "Columns": w,
        "ImagePositionPatient": "[" + ", ".join(f"{v:.2f}" for v in lps) + "]",
        "ImageOrientationPatient": "[-1, 0, 0, 0, -1, 0]",
    }


def scan_lesions(task: ScanTask) -> tuple[Anatomy, dict[str, int], float, list[Lesion]]:
    """The patient of ``task`` with the lesions of this scan."""
    code = SPLIT_CODE[task.split]
    kw = {"findings": task.preset.findings, "nodules": task.preset.nodules} if task.preset is not None else {}
    anatomy, labels, age = patient(task.seed, code, task.patient, **kw)
    rng = np.random.default_rng([task.seed, code, task.patient, 1000 + task.scan])
    lesions = build_lesions(anatomy, labels, rng, Atlas(anatomy))
    return anatomy, labels, age, lesions


def write_scan(task: ScanTask) -> list[dict]:
    """Render and write every reconstruction of one scan.

    Returns:
        One dict per volume: ``VolumeName, split, scan_id, labels, lesions, age, sex, report_fields,
        metadata``.
    """
    code = SPLIT_CODE[task.split]
    anatomy, labels, age, lesions = scan_lesions(task)
    rng = np.random.default_rng([task.seed, code, task.patient, 2000 + task.scan])
    findings, impression = ct_report(lesions, labels, rng)
    grid = Grid.centred(task.preset.ct_shape, task.preset.ct_spacing)
    scan_id = f"{task.split}_{task.patient}_{SCAN_LETTERS[task.scan]}"
    painted = paint_patient(anatomy, lesions, grid).hu  # shared by the reconstructions
    out = []
    for r in range(task.n_recon):
        recon = Reconstruction("soft" if r == 0 else "sharp")
        name = task.name(r)
        hu = acquire(painted, anatomy, grid, hash_seed(task.seed, code, task.patient, task.scan, r), recon)
        write_nifti(task.root / f"{task.split}_{task.patient}" / scan_id / f"{name}.nii.gz", hu, grid.affine_xyz())
        technique = (f"Non-contrast chest CT, axial {grid.spacing[0]:g} mm sections, "
                     f"{'soft tissue' if recon.kernel == 'soft' else 'lung'} kernel.")
        out.append({
            "VolumeName": f"{name}.nii.gz", "split": task.split, "scan_id": scan_id,
            "labels": {n: int(labels[n]) for n in load_labels().names},
            "lesions": [lesion_record(les, grid) for les in lesions],
            "age": round(age), "sex": "F" if anatomy.female else "M",
            "report_fields": [_clinical(labels, rng), technique, findings, impression],
            "metadata": _metadata(name, grid, recon, age, anatomy.female),
        })
    return out


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    return int(np.random.default_rng(list(parts)).integers(2**63))
