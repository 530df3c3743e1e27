"""Evaluating a trained CT model (``ctxray evaluate``, ``ctxray finetune``).

- ``run``: ``evaluate_checkpoint`` embeds a cache split and writes ``E/metrics.json``, CSVs and ROC plots.
- ``protocol``: zero-shot per volume and per scan, thresholds chosen on a threshold split, bootstrap intervals;
  also the reader of the thresholds block that ``ctxray export`` uses.
- ``retrieval_metrics``: report <-> volume recall at K both ways, with intervals.
- ``bootstrap``: (cluster) bootstrap intervals. ``report``: CSV/JSON/plot writers.
- ``finetune``: linear probing and fine-tuning with label fractions. ``headroom``: probe-readout headroom.
The metrics themselves (AUROC, thresholds, tie-aware recall@k) are :mod:`ctxray.metrics`.
"""
