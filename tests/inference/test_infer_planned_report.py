"""`ctxray predict` with a planned report generator: the report beside the findings table, with the caveats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ctxray
from ctxray.inference.predict import predict

from .infer_helpers import synthetic_ct, write_nifti

FINDINGS = [
    "Heart size is normal. No pleural effusion or thickening was detected. No pulmonary nodule was detected.",
    "Heart size is normal. Pleural effusion is present on the left, 20 mm at its deepest. No pulmonary nodule "
    "was detected.",
    "Cardiomegaly is present. No pleural effusion or thickening was detected. A 9 mm solid nodule is seen in the "
    "right upper lobe.",
]
IMPRESSIONS = ["No significant pathology was detected in the thorax.", "Left pleural effusion.",
               "Cardiomegaly. Pulmonary nodule in the right upper lobe."]


@pytest.fixture(scope="module")
def planned_model_dir(tiny_run, tiny_metrics, tmp_path_factory):
    """The tiny run's encoder with a planned generator fitted on random volumes, exported with ``--decoder``."""
    from ctxray.generate.planned import PlannedConfig, VolumeView, encode_volumes, fit_planned, save_planned
    from ctxray.inference.export import export_model
    from ctxray.train.checkpoint import load_model

    root = tmp_path_factory.mktemp("planned")
    model, _, cfg = load_model(tiny_run / "checkpoints" / "best")
    view = VolumeView(model.volume_encoder.eval(), model.volume_proj)
    gen_rng = torch.Generator().manual_seed(0)
    vols = [torch.rand(1, 1, 16, 32, 32, generator=gen_rng) for _ in range(12)]
    loaders = [lambda v=v: v for v in vols]
    feats, flipped = encode_volumes(view, loaders), encode_volumes(view, loaders, flip=True)
    findings, impressions = FINDINGS * 4, IMPRESSIONS * 4
    pcfg = PlannedConfig(folds=2, wording="frequent")
    gen = fit_planned(feats, flipped, findings, impressions, (FINDINGS[0], IMPRESSIONS[0]), pcfg)
    gen.thresholds = np.zeros_like(gen.thresholds)  # plan every finding the bank can state: a visible report
    desc = {"name": cfg.model.encoder, "kwargs": {"input_shape": list(cfg.model.input_shape)}, "source": "test",
            "init": "checkpoint"}
    spec = tiny_run.parent / "cache" / "spec.json"
    save_planned(root / "G", gen, view, desc, (findings, impressions), (FINDINGS[0], IMPRESSIONS[0]), spec)
    return export_model(tiny_run, root / "model", decoder=root / "G", metrics=tiny_metrics)


def test_predict_writes_the_planned_report_beside_the_findings_with_caveats(planned_model_dir, tmp_path):
    hu = synthetic_ct()
    write_nifti(tmp_path / "scan.nii.gz", hu, (9.0, 8.0, 8.0))
    model = ctxray.load(planned_model_dir)
    text = model.generate_report(tmp_path / "scan.nii.gz")
    assert "Cardiomegaly is present." in text and "left" in text  # every planned finding is stated
    assert "No pleural effusion" not in text  # and its negation is not
    [res] = predict(model, [tmp_path / "scan.nii.gz"], tmp_path / "out", explain="none")
    assert res.status == "ok"
    out = tmp_path / "out" / res.name
    assert (out / "report.txt").read_text().strip() == text
    html = (out / "report.html").read_text()
    data = json.loads(html.split('id="ctxray-data">', 1)[1].split("</script>", 1)[0])
    assert data["report"] == text
    assert "planned generator" in data["report_source"] and "not reviewed by a radiologist" in data["report_source"]
    assert "Research use only" in data["banner"]
    assert [f["label"] for f in data["findings"]] == model.labels  # the findings table is on the same page
