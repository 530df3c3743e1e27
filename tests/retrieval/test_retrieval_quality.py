"""Agreement measures: the IU nearest-report check and mean-centred matching."""

from __future__ import annotations

import pytest
import torch

from ctxray.data.iu import IUReport
from ctxray.retrieval.quality import iu_text_check
from ctxray.retrieval.search import center_embeddings, exact_topk
from ctxray.teacher.base import Teacher


class _KeywordTeacher(Teacher):
    """Text-only fake: one axis per keyword it finds, plus a little noise from the text's length."""

    name = "keyword"
    image_size = None
    embed_dim = 4
    WORDS = ("cardiomegaly", "effusion", "normal", "nodule")

    def _encode_text(self, texts):
        rows = [[float(w in t.lower()) + 0.01 * len(t) % 0.03 for w in self.WORDS] for t in texts]
        return torch.tensor(rows)


def _report(i, text, mesh):
    return IUReport(id=f"CXR{i}", findings=text, impression="", report=text, mesh=mesh, mesh_major=mesh)


def test_iu_check_text_random_oracle():
    reports = [
        _report(1, "Cardiomegaly.", ["Cardiomegaly/mild"]),
        _report(2, "Heart shows cardiomegaly.", ["Cardiomegaly/severe"]),
        _report(3, "Normal chest.", ["normal"]),
        _report(4, "Normal study.", ["normal"]),
        _report(5, "Left effusion.", ["Pleural Effusion/left"]),
        _report(6, "A nodule.", ["Nodule"]),
    ]
    out = iu_text_check(_KeywordTeacher().freeze(), reports)
    assert out["n"] == 6
    # heads: 1<->2 and 3<->4 find their twin; 5 and 6 have no twin anywhere
    assert out["heads"]["text"] == pytest.approx(4 / 6)
    assert out["heads"]["oracle"] == pytest.approx(4 / 6)
    # full terms: only the two normal reports share a set
    assert out["full"]["oracle"] == pytest.approx(2 / 6) and out["full"]["text"] == pytest.approx(2 / 6)
    assert 0.0 <= out["heads"]["random"] <= out["heads"]["oracle"]


def test_centering_removes_a_shared_offset_and_hubs():
    gen = torch.Generator().manual_seed(0)
    gallery = torch.randn(50, 8, generator=gen)
    queries = gallery + 0.1 * torch.randn(50, 8, generator=gen)  # a noisy copy of every gallery item
    offset = 5 * torch.randn(1, 8, generator=gen)  # a "style" shared by every query
    shifted = queries + offset
    assert torch.allclose(center_embeddings(shifted), center_embeddings(queries), atol=1e-5)
    unit = torch.nn.functional.normalize
    _, raw = exact_topk(unit(shifted, dim=-1), unit(gallery, dim=-1), 1)
    _, cen = exact_topk(center_embeddings(shifted), center_embeddings(gallery), 1)
    assert (cen[:, 0] == torch.arange(50)).float().mean() > 0.9  # each query finds its own source
    assert (raw[:, 0] == torch.arange(50)).float().mean() < 0.5  # the offset makes a few items hubs
