"""`ctxray predict`: DICOM folder and NIfTI of one volume agree; outputs; a bad scan does not stop the batch."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import ctxray
from ctxray.cli import main
from ctxray.inference.predict import discover_scans, predict

from .infer_helpers import synthetic_ct, write_dicom_series, write_nifti

SPACING = (9.0, 8.0, 8.0)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    hu = synthetic_ct()
    write_nifti(root / "case_a.nii.gz", hu, SPACING)
    write_dicom_series(root / "case_a_dicom", hu, SPACING)
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    (root / "notes.txt").write_text("not a scan")
    return root, hu


def test_discover_scans(scans):
    root, _ = scans
    found = discover_scans([root])
    assert sorted(p.name for p in found) == ["broken.nii.gz", "case_a.nii.gz", "case_a_dicom"]
    assert discover_scans([root / "case_a_dicom"]) == [root / "case_a_dicom"]


def test_predict_dicom_and_nifti_agree(tiny_model_dir, scans, tmp_path):
    root, hu = scans
    model = ctxray.load(tiny_model_dir)
    missing = root / "does_not_exist.nii.gz"
    results = predict(model, [root, missing], tmp_path / "out", explain="all", explain_unvalidated=True)
    by_input = {Path(r.input).name: r for r in results}
    assert all(re.fullmatch(r"scan-[0-9a-f]{12}", r.name) for r in results)  # pseudonyms, not input names
    assert by_input["broken.nii.gz"].status == "error" and "unreadable NIfTI" in by_input["broken.nii.gz"].error
    assert "broken" not in by_input["broken.nii.gz"].error  # the reason, without the input path
    gone = by_input["does_not_exist.nii.gz"]
    assert gone.status == "error" and "not found" in gone.error
    nii, dcm = by_input["case_a.nii.gz"], by_input["case_a_dicom"]
    assert nii.status == dcm.status == "ok"
    p_nii = np.array([f["probability"] for f in nii.findings])
    p_dcm = np.array([f["probability"] for f in dcm.findings])
    np.testing.assert_allclose(p_dcm, p_nii, atol=1e-3)  # DICOM stores HU in steps of 2 (slope 2)
    assert [f["decision"] for f in nii.findings] == [f["decision"] for f in dcm.findings]

    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_ok"] == 2 and summary["n_error"] == 2
    assert by_input["broken.nii.gz"].name in (out / "errors.log").read_text()
    for path in [out / "summary.json", *out.glob(f"{dcm.name}/*.*")]:  # no DICOM identifier leaks
        text = path.read_bytes()
        assert b"ID12345" not in text and b"TEST^PATIENT" not in text, path
    for name, source in ((nii.name, root / "case_a.nii.gz"), (dcm.name, None)):
        d = out / name
        doc = json.loads((d / "findings.json").read_text())
        assert [f["label"] for f in doc["findings"]] == model.labels
        assert all({"label", "probability", "threshold", "decision"} <= set(f) for f in doc["findings"])
        emb = np.load(d / "embedding.npy")
        assert emb.shape == (32,) and abs(np.linalg.norm(emb) - 1) < 1e-5
        assert "no report decoder" in (d / "report.txt").read_text()
        assert (d / "report.html").stat().st_size > 10_000
        mask = os.umask(0)
        os.umask(mask)
        assert (d / "report.html").stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
        heat = nib.load(d / "heatmaps" / "lung_nodule.nii.gz")
        expected_affine = nib.load(source).affine if source else model.read(root / "case_a_dicom").affine
        np.testing.assert_allclose(heat.affine, expected_affine, atol=1e-4)
        assert heat.shape == hu.shape[::-1]  # NIfTI data is (x, y, z)
        data = np.asarray(heat.dataobj)
        assert 0 <= data.min() and data.max() == pytest.approx(1.0, abs=1e-5)
    # the DICOM volume reads to the same array as the NIfTI one, so the maps agree too
    a = np.asarray(nib.load(out / nii.name / "heatmaps" / "emphysema.nii.gz").dataobj)
    b = np.asarray(nib.load(out / dcm.name / "heatmaps" / "emphysema.nii.gz").dataobj)
    assert np.abs(a - b).max() < 0.05


def test_predict_cli_positive_maps_only(tiny_model_dir, scans, tmp_path):
    root, _ = scans
    out = tmp_path / "cli"
    rc = main(["predict", "--model", str(tiny_model_dir), "--input", str(root / "case_a.nii.gz"), "--out", str(out),
               "--explain-unvalidated"])
    assert rc == 0
    (scan,) = [p for p in out.iterdir() if p.is_dir()]
    doc = json.loads((scan / "findings.json").read_text())
    maps = {p.name for p in (scan / "heatmaps").glob("*.nii.gz")} if (scan / "heatmaps").exists() else set()
    expected = {f["heatmap"].split("/")[-1] for f in doc["findings"] if f["decision"]}
    assert expected and len(expected) < len(doc["findings"])  # the fixture model has some of each
    assert maps == expected
    assert all((f["heatmap"] is None) != f["decision"] for f in doc["findings"])
    # by default no map for a label whose localisation was never validated (the fixture folder validated none)
    rc = main(["predict", "--model", str(tiny_model_dir), "--input", str(root / "case_a.nii.gz"), "--out",
               str(tmp_path / "default")])
    (scan,) = [p for p in (tmp_path / "default").iterdir() if p.is_dir()]
    doc = json.loads((scan / "findings.json").read_text())
    assert rc == 0 and not (scan / "heatmaps").exists() and all(f["heatmap"] is None for f in doc["findings"])
    assert len(doc["heatmaps_not_drawn_unvalidated"]) == len(expected)  # the positive findings, all skipped
    assert "never validated" in (scan / "report.html").read_text()
    rc = main(["predict", "--model", str(tiny_model_dir), "--input", str(root / "broken.nii.gz"), "--out",
               str(tmp_path / "strict"), "--strict"])
    assert rc == 1


def test_failing_decoder_keeps_the_findings(tiny_model_dir, scans, tmp_path):
    root, _ = scans
    model = ctxray.load(tiny_model_dir)
    model.decoder_dir = tmp_path / "not_a_generator"  # as if decoder/ were unusable
    (res,) = predict(model, [root / "case_a.nii.gz"], tmp_path / "out", explain="none", html=False)
    assert res.status == "ok" and len(res.findings) == 18
    text = (tmp_path / "out" / res.name / "report.txt").read_text()
    assert "report decoder failed" in text and "FileNotFoundError" in text


def test_validated_labels_get_maps_and_the_card_says_which(tiny_run, scans, tmp_path):
    """Export with a pointing benchmark: only labels that passed it (>= 5 cases, hit rate >= 0.6) get maps by
    default, for the method they passed with; the model card lists them."""
    from ctxray.inference.export import export_model

    root, _ = scans
    row = {"n": 8, "hits": 6, "rate": 0.75, "best_possible": 0.9, "energy": 0.3, "random_volume": 0.01,
           "random_body": 0.02}
    bench = {"model": "m", "world": "W", "split": "valid", "margin_mm": 10.0, "n_volumes": 50, "methods": {
        "hirescam": {"Lung nodule": row, "Emphysema": {**row, "rate": 0.5, "hits": 4},
                     "Atelectasis": {**row, "n": 3, "hits": 3, "rate": 1.0}}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    out = export_model(tiny_run, tmp_path / "m", localisation=tmp_path / "bench.json")
    model = ctxray.load(out)
    assert model.validated_labels("hirescam") == ["Lung nodule"] and model.validated_labels("gradcam") == []
    assert "| hirescam | Lung nodule (0.75, n=8) |" in model.card
    model.thresholds = {n: 0.0 for n in model.labels}  # every label positive
    (res,) = predict(model, [root / "case_a.nii.gz"], tmp_path / "o", explain_method="hirescam", html=False)
    assert [f["label"] for f in res.findings if f["heatmap"]] == ["Lung nodule"]
    (res,) = predict(model, [root / "case_a.nii.gz"], tmp_path / "o2", html=False)  # gradcam: none validated
    assert not any(f["heatmap"] for f in res.findings)


def test_a_method_with_an_option_is_run_and_validated_by_its_full_name(tiny_run, scans, tmp_path):
    """`occlusion:blur` (the fill the pointing benchmark validated) runs through the model folder and predict,
    keyed by that name in localisation.json; an unknown method fails before any scan is read."""
    from ctxray.inference.export import export_model

    root, _ = scans
    row = {"n": 8, "hits": 6, "rate": 0.75, "best_possible": 0.9, "energy": 0.3, "random_volume": 0.01,
           "random_body": 0.02}
    bench = {"model": "m", "world": "W", "split": "valid", "margin_mm": 10.0, "n_volumes": 50,
             "methods": {"occlusion:blur": {"Pleural effusion": row}}}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    model = ctxray.load(export_model(tiny_run, tmp_path / "m", localisation=tmp_path / "bench.json"))
    assert model.validated_labels("occlusion:blur") == ["Pleural effusion"] and not model.validated_labels("occlusion")
    x = torch.rand(1, 1, *model.spec.shape_zyx)
    blur = model.relevance_input(x, "Pleural effusion", "occlusion:blur")
    air = model.relevance_input(x, "Pleural effusion", "occlusion")
    assert "smoothed copy" in blur.method and "smoothed copy" not in air.method
    assert blur.map.shape == tuple(model.spec.shape_zyx) and not np.allclose(blur.map, air.map)
    model.thresholds = {n: 0.0 for n in model.labels}
    (res,) = predict(model, [root / "case_a.nii.gz"], tmp_path / "o", explain_method="occlusion:blur", html=False)
    assert [f["label"] for f in res.findings if f["heatmap"]] == ["Pleural effusion"]
    with pytest.raises(ValueError, match="unknown 'saliency'"):
        predict(model, [root / "case_a.nii.gz"], tmp_path / "o3", explain_method="saliency")
    assert not (tmp_path / "o3").exists()


def test_predict_cli_refuses_an_unknown_explanation_method(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--model", str(tmp_path / "m"), "--input", str(tmp_path), "--out", str(tmp_path / "o"),
              "--explain-method", "occlusion:air"])
    assert stop.value.code == 2 and "occlusion:blur" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
