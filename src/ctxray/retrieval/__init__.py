"""Language-guided retrieval (``ctxray retrieve``): CT reports -> X-ray gallery pairs and cached teacher targets.

Modules, bottom up: :mod:`~ctxray.retrieval.search` (exact / FAISS top-k, pairing modes),
:mod:`~ctxray.retrieval.rerank` (X-ray-visible queries, label re-ranking, hubness),
:mod:`~ctxray.retrieval.quality` (the label-agreement table of ``quality.json``, the IU text check),
:mod:`~ctxray.retrieval.targets` (the folder's files: ``pairs.csv``, ``targets.safetensors``/``.json``) and
:mod:`~ctxray.retrieval.stage` (:func:`retrieve` with its :class:`RetrievalConfig`). Training reads the
targets with :func:`~ctxray.retrieval.targets.load_targets` and needs nothing else from here.
"""

from __future__ import annotations

from ctxray.retrieval.search import center_embeddings, exact_topk, faiss_topk, pair, search
from ctxray.retrieval.stage import CTReports, RetrievalConfig, read_ct_reports, retrieve
from ctxray.retrieval.targets import TeacherTargets, load_targets

__all__ = ["CTReports", "RetrievalConfig", "TeacherTargets", "center_embeddings", "exact_topk", "faiss_topk",
           "load_targets", "pair", "read_ct_reports", "retrieve", "search"]
