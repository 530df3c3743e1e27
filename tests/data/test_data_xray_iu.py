"""Readers the teacher and retrieval stages use: the IU report archive and the X-ray gallery."""

from __future__ import annotations

import csv
import importlib.util
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from ctxray.data.iu import read_iu_reports
from ctxray.data.xray import load_xray_image, read_xray_gallery
from ctxray.labels import load_labels

_XML = """<?xml version="1.0" encoding="utf-8"?>
<eCitation><uId id="CXR{n}"/><MedlineCitation><Article><Abstract>
<AbstractText Label="COMPARISON">None.</AbstractText>
<AbstractText Label="FINDINGS">{findings}</AbstractText>
<AbstractText Label="IMPRESSION">{impression}</AbstractText>
</Abstract></Article></MedlineCitation>
<MeSH>{mesh}</MeSH><parentImage id="CXR{n}_IM-1"/></eCitation>"""


def _write_tgz(path, docs: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in docs.items():
            data = text.encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_iu_parses_fields_sorts_by_number_and_cleans(tmp_path):
    docs = {
        "10.xml": _XML.format(n=10, findings="Heart   is enlarged.", impression="Cardiomegaly.",
                              mesh="<major>Cardiomegaly/mild</major><major>Opacity/lung/base/left</major>"
                                   "<automatic>opacity</automatic>"),
        "2.xml": _XML.format(n=2, findings="", impression="Normal chest.", mesh="<major>normal</major>"),
    }
    tgz = tmp_path / "r.tgz"
    _write_tgz(tgz, docs)
    reports = read_iu_reports(tgz)
    assert [r.id for r in reports] == ["CXR2", "CXR10"]  # numeric, not lexicographic, order
    a, b = reports
    assert a.report == "Normal chest." and a.findings == ""
    assert b.report == "Heart is enlarged. Cardiomegaly."  # whitespace normalised, joined
    assert b.mesh_major == ["Cardiomegaly/mild", "Opacity/lung/base/left"]
    assert b.mesh_automatic == ["opacity"] and b.mesh == b.mesh_major + ["opacity"]
    assert b.major_heads == frozenset({"cardiomegaly", "opacity"})
    assert b.image_ids == ["CXR10_IM-1"]


def test_iu_bad_member_names_the_file(tmp_path):
    tgz = tmp_path / "bad.tgz"
    _write_tgz(tgz, {"7.xml": "<eCitation><uId id='CXR7'/>"})
    with pytest.raises(ValueError, match="7.xml"):
        read_iu_reports(tgz)
    with pytest.raises(FileNotFoundError):
        read_iu_reports(tmp_path / "missing.tgz")


@pytest.mark.skipif(importlib.util.find_spec("torchxrayvision") is None, reason="IU data wheel not installed")
def test_iu_real_archive_from_the_wheel():
    reports = read_iu_reports()
    assert len(reports) == 3955
    assert len({r.id for r in reports}) == 3955
    assert sum(1 for r in reports if r.report) > 3900
    assert all(r.mesh_major for r in reports)
    normal = sum(1 for r in reports if r.major_heads == frozenset({"normal"}))
    assert 1000 < normal < 2000  # about a third of IU reports are indexed "normal"


def _gallery(tmp_path, rows=3, bad_label=None):
    names = load_labels().names
    (tmp_path / "images").mkdir()
    with open(tmp_path / "reports.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "subject_id", "split", "image_path", "report", *names])
        for i in range(rows):
            img = (np.arange(12 * 10).reshape(12, 10) * 2).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "images" / f"x{i}.png")
            labels = [int(j == i) for j in range(len(names))]
            if bad_label is not None and i == 1:
                labels[0] = bad_label
            split = "train" if i else "test"
            w.writerow([f"x{i}", f"s{i // 2}", split, f"images/x{i}.png", f" Report  {i}. ", *labels])
    return tmp_path


def test_xray_gallery_reads_labels_paths_and_images(tmp_path):
    root = _gallery(tmp_path)
    recs = read_xray_gallery(root)
    assert [r.id for r in recs] == ["x0", "x1", "x2"]
    assert recs[1].report == "Report 1." and recs[1].subject_id == "s0"
    assert recs[2].labels.dtype == np.float32 and recs[2].labels[2] == 1 and recs[2].labels.sum() == 1
    assert [r.id for r in read_xray_gallery(root, split="train")] == ["x1", "x2"]
    img = load_xray_image(recs[0].image_path)
    assert img.shape == (1, 12, 10) and img.dtype == np.float32
    assert img.min() == 0.0 and np.isclose(img.max(), 238 / 255)
    assert load_xray_image(recs[0].image_path, 8).shape == (1, 8, 8)


def test_xray_gallery_errors_name_file_and_row(tmp_path):
    root = _gallery(tmp_path, bad_label="2")
    with pytest.raises(ValueError, match=r"reports.csv:3 .*not 0 or 1"):
        read_xray_gallery(root)
    with pytest.raises(FileNotFoundError, match="reports.csv"):
        read_xray_gallery(tmp_path / "nowhere")
    (tmp_path / "junk.png").write_text("not an image")
    with pytest.raises(ValueError, match="junk.png"):
        load_xray_image(tmp_path / "junk.png")
