"""``ctxray evaluate``: embed a cache split with a trained model, then zero-shot and retrieval metrics.

Reads a checkpoint (``ctxray.train.checkpoint.load_model``) and a volume cache (read once with
``ctxray.data.cachedir.read_cache``: the ``CTCacheDataset`` splits and the scan ids); writes ``E/metrics.json``,
``E/per_label.csv``, ``E/scores.csv`` (per-volume probabilities and labels) and ``E/roc_*.png``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ctxray.data.cachedir import manifest_path, read_cache, scan_ids
from ctxray.data.dataset import CTCacheDataset
from ctxray.data.text import names_side, swap_sides
from ctxray.evaluate.protocol import aggregate_by_scan, zero_shot_protocols
from ctxray.evaluate.report import per_label_rows, plot_roc, score_rows, write_csv, write_json
from ctxray.evaluate.retrieval_metrics import retrieval_with_ci
from ctxray.labels import CT_RATE_LABELS, LabelSet, load_labels
from ctxray.metrics import auroc_per_label
from ctxray.models.zeroshot import encode_texts, eval_mode, logit_scale_of, model_device, prompt_embeddings
from ctxray.models.zeroshot import zero_shot_probs as _probs
from ctxray.train.checkpoint import MODEL_FILE, load_model, resolve_checkpoint
from ctxray.utils.io import sha256_file
from ctxray.utils.progress import progress

log = logging.getLogger(__name__)


@dataclass
class SplitEmbeddings:
    """A split embedded by a dual encoder.

    Shape:
        volume, text: (N, E) L2-normalised; labels: (N, 18) in packaged label order, NaN = unknown
    """

    ids: list[str]
    scan_ids: list[str]
    volume: torch.Tensor
    text: torch.Tensor
    labels: np.ndarray
    reports: list[str]


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def embed_dataset(model: Any, tokenizer: Any, dataset: Iterable[dict], scan_of: dict[str, str] | None = None,
                  batch_size: int = 4, max_length: int = 128, desc: str = "embed", workers: int = 0) -> SplitEmbeddings:
    """Volume and report embeddings of every item of a dataset (``CTCacheDataset`` items).

    Args:
        model: ``encode_volume`` / ``encode_text`` (normalised).
        tokenizer: ``tokenizer(texts, max_length)``.
        dataset: items ``{"id", "volume" (1,D,H,W), "report", "labels" (18,)}``; a torch Dataset or a list.
        scan_of: volume id -> scan id (``ctxray.data.cachedir.scan_ids``); None: each volume its own scan.
        batch_size: volumes per forward pass.
        max_length: token budget for reports.
        workers: DataLoader worker processes (volume loading).
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    device = model_device(model)
    ids: list[str] = []
    reports: list[str] = []
    vols: list[torch.Tensor] = []
    labels: list[np.ndarray] = []
    with eval_mode(model):
        for batch in progress(loader, total=len(loader), desc=desc, unit="batch"):
            vols.append(model.encode_volume(batch["volume"].to(device)).float().cpu())
            ids.extend(str(i) for i in batch["id"])
            reports.extend(batch["report"])
            labels.append(np.asarray(batch["labels"], dtype=np.float64))
    if not ids:
        raise ValueError(f"{desc}: the dataset is empty")
    text = encode_texts(model, tokenizer, reports, max_length=max_length)
    scan_of = scan_of or {}
    return SplitEmbeddings(ids, [scan_of.get(i, i) for i in ids], torch.cat(vols), text,
                           np.concatenate(labels), reports)


def select_labels(labels: np.ndarray, label_set: LabelSet) -> np.ndarray:
    """Columns of the packaged 18-label matrix for ``label_set``'s names (NaN for names not among them).

    Shape:
        labels: (N, 18) -> (N, len(label_set))
    """
    out = np.full((labels.shape[0], len(label_set)), np.nan)
    for j, name in enumerate(label_set.names):
        if name in CT_RATE_LABELS:
            out[:, j] = labels[:, CT_RATE_LABELS.index(name)]
        else:
            log.warning("label %r is not a cache label column; it has no ground truth and is skipped", name)
    return out


def zero_shot_scores(model: Any, tokenizer: Any, volume_emb: torch.Tensor, label_set: LabelSet,
                     max_length: int = 128) -> np.ndarray:
    """Zero-shot probabilities of every label for the given volume embeddings.

    Shape:
        volume_emb: (N, E) -> (N, L)
    """
    pos, neg = prompt_embeddings(model, tokenizer, label_set, max_length=max_length)
    return _probs(volume_emb, pos, neg, logit_scale_of(model)).numpy()


def evaluate_embeddings(model: Any, tokenizer: Any, emb: SplitEmbeddings, label_set: LabelSet,
                        thr_emb: SplitEmbeddings | None = None, n_boot: int = 1000, seed: int = 0,
                        max_length: int = 128) -> tuple[dict, np.ndarray, np.ndarray]:
    """Zero-shot (per volume and per scan) and retrieval metrics of an embedded split.

    Args:
        thr_emb: the split thresholds are chosen on; None: ``emb`` itself (stated in the output).

    Returns:
        (metrics dict with ``zero_shot`` and ``retrieval``, labels (N, L), probabilities (N, L)).
    """
    y = select_labels(emb.labels, label_set)
    probs = zero_shot_scores(model, tokenizer, emb.volume, label_set, max_length)
    kw: dict[str, Any] = {}
    if thr_emb is not None:
        kw = {"thr_y": select_labels(thr_emb.labels, label_set),
              "thr_scores": zero_shot_scores(model, tokenizer, thr_emb.volume, label_set, max_length),
              "thr_scan_ids": thr_emb.scan_ids}
    zero_shot = zero_shot_protocols(y, probs, emb.scan_ids, label_set.names, n_boot=n_boot, seed=seed, **kw)
    evaluated = [n for j, n in enumerate(label_set.names) if np.isfinite(zero_shot["per_label"][n]["auroc"])]
    zero_shot["labels_evaluated"] = evaluated
    zero_shot["n_labels_evaluated"] = len(evaluated)
    zero_shot["n_scans"] = zero_shot["per_scan"]["n"]
    retrieval = retrieval_with_ci(emb.volume, emb.text, n_boot=n_boot, seed=seed, clusters=emb.scan_ids)
    report_zs = report_zero_shot(model, tokenizer, emb.text, y, label_set, max_length)
    sides = side_test(model, tokenizer, emb, max_length)
    return {"zero_shot": zero_shot, "retrieval": retrieval, "report_zero_shot": report_zs, "sides": sides}, y, probs


def side_test(model: Any, tokenizer: Any, emb: SplitEmbeddings, max_length: int = 128) -> dict[str, Any]:
    """Whether the volume embedding knows which side its findings are on.

    For every report that names a side, the volume's similarity to its own report against the same report with
    "left" and "right" swapped (:func:`~ctxray.data.text.swap_sides`): nothing else differs, so only sides can
    decide. ``accuracy`` is the share of volumes closer to their own report (ties count a half; 0.5 is chance),
    with a Wilson 95% interval; ``text_cos_swapped`` the mean cosine between a report and its swapped copy (1.0:
    the report tower does not read sides at all, and every volume ties).
    """
    idx = [i for i, r in enumerate(emb.reports) if names_side(r)]
    if not idx:
        return {"n": 0, "accuracy": float("nan"), "ci95": [float("nan")] * 2, "mean_margin": float("nan"),
                "text_cos_swapped": float("nan")}
    swapped = encode_texts(model, tokenizer, [swap_sides(emb.reports[i]) for i in idx], max_length=max_length)
    vol, own = emb.volume[idx].float(), emb.text[idx].float()
    margin = ((vol * own).sum(1) - (vol * swapped.float()).sum(1)).double().numpy()
    n, acc = len(idx), float(np.mean((margin > 0) + 0.5 * (margin == 0)))
    z = 1.96
    centre = (acc + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"n": n, "accuracy": acc, "ci95": [float(centre - half), float(centre + half)],
            "mean_margin": float(margin.mean()), "text_cos_swapped": float((own * swapped.float()).sum(1).mean())}


def report_zero_shot(model: Any, tokenizer: Any, text_emb: torch.Tensor, y: np.ndarray, label_set: LabelSet,
                     max_length: int = 128) -> dict[str, Any]:
    """The zero-shot prompts applied to the split's own *reports*: the ceiling the report tower puts on
    zero-shot image classification (a tower that cannot tell a report with a finding from one without
    cannot teach the image tower to). The rule labeler scores ~1.0 on the synthetic reports.

    Shape:
        text_emb: (N, E) report embeddings; y: (N, L) labels

    Returns:
        ``macro`` AUROC and ``per_label`` (NaN where the split has one class).
    """
    pos, neg = prompt_embeddings(model, tokenizer, label_set, max_length=max_length)
    scores = _probs(text_emb, pos, neg, logit_scale_of(model)).numpy()
    per = auroc_per_label(y, scores)
    finite = per[np.isfinite(per)]
    return {"macro": float(finite.mean()) if finite.size else float("nan"),
            "per_label": {n: float(v) for n, v in zip(label_set.names, per)}}


def write_outputs(out: Path, metrics: dict, emb: SplitEmbeddings, y: np.ndarray, probs: np.ndarray,
                  names: Sequence[str]) -> None:
    """``metrics.json``, ``per_label.csv``, ``scores.csv``, ``roc_per_volume.png``, ``roc_per_scan.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    zs = metrics["zero_shot"]
    write_json(out / "metrics.json", metrics)
    write_csv(out / "per_label.csv", per_label_rows({"per_volume": zs, "per_scan": zs["per_scan"]}))
    write_csv(out / "scores.csv", score_rows(emb.ids, emb.scan_ids, names, probs, y))
    plot_roc(out / "roc_per_volume.png", y, probs, names, "zero-shot, per volume")
    _, y_scan, s_scan = aggregate_by_scan(emb.scan_ids, y, probs)
    plot_roc(out / "roc_per_scan.png", y_scan, s_scan, names, "zero-shot, per scan")


def checkpoint_identity(checkpoint: str | Path, prefer: str = "best") -> dict[str, str]:
    """Which checkpoint a run folder or checkpoint folder resolves to, and the SHA-256 of its weights (so
    ``ctxray export`` can refuse thresholds measured on another checkpoint)."""
    ckpt = resolve_checkpoint(checkpoint, prefer)
    return {"checkpoint_resolved": str(ckpt.resolve()), "weights_sha256": sha256_file(ckpt / MODEL_FILE)}


def evaluate_checkpoint(checkpoint: str | Path, cache: str | Path, out: str | Path, split: str | None = "valid",
                        labels: str | Path | None = None, threshold_split: str | None = None,
                        batch_size: int = 4, n_boot: int = 1000, seed: int = 0, device: str = "auto",
                        workers: int = 0) -> dict:
    """Evaluate a trained model on one cache split and write the outputs to ``out``.

    Args:
        checkpoint: a run folder or a checkpoint folder.
        cache: a ``ctxray preprocess`` cache folder.
        out: output folder.
        split: the cache split to evaluate (None: all volumes).
        labels: a label file (``resources/labels.json`` schema); None for the packaged one.
        threshold_split: the split on which Youden thresholds are chosen; None or equal to ``split``:
            the evaluated split itself (stated in ``metrics.json``).
        batch_size, n_boot, seed: embedding batch size, bootstrap replicates and seed.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``.
        workers: DataLoader worker processes.

    Returns:
        The metrics dict written to ``out/metrics.json``.
    """
    t0 = time.time()
    torch.manual_seed(seed)
    model, tokenizer, config = load_model(checkpoint, map_location=resolve_device(device))
    label_set = load_labels(str(labels) if labels else None)
    max_length = int(getattr(getattr(getattr(config, "model", None), "text", None), "max_length", 128))
    index = read_cache(cache)  # one read of the manifest and spec serves both splits and the scan ids
    scan_of = scan_ids(list(index.rows), manifest_path(cache))
    emb = embed_dataset(model, tokenizer, CTCacheDataset(index, split=split), scan_of, batch_size, max_length,
                        desc=f"embed {split or 'all'}", workers=workers)
    thr_emb = None
    if threshold_split and threshold_split != split:
        thr_emb = embed_dataset(model, tokenizer, CTCacheDataset(index, split=threshold_split), scan_of,
                                batch_size, max_length, desc=f"embed {threshold_split} (thresholds)", workers=workers)
    metrics, y, probs = evaluate_embeddings(model, tokenizer, emb, label_set, thr_emb, n_boot, seed, max_length)
    metrics["zero_shot"]["thresholds"]["split"] = threshold_split or split
    metrics["meta"] = {"checkpoint": str(checkpoint), **checkpoint_identity(checkpoint), "cache": str(cache),
                       "split": split,
                       "label_file": label_set.source, "n_volumes": len(emb.ids),
                       "logit_scale": logit_scale_of(model), "seconds": round(time.time() - t0, 1)}
    write_outputs(Path(out), metrics, emb, y, probs, label_set.names)
    zs = metrics["zero_shot"]
    log.info("zero-shot macro AUROC %.3f (per scan %.3f), F1 %.3f over %d labels; R@5 v->r %.3f, r->v %.3f; "
             "the same prompts on the reports themselves %.3f", zs["macro"]["auroc"],
             zs["per_scan"]["macro"]["auroc"], zs["macro"]["f1"], zs["n_labels_evaluated"],
             metrics["retrieval"]["volume_to_report"]["R@5"], metrics["retrieval"]["report_to_volume"]["R@5"],
             metrics["report_zero_shot"]["macro"])
    sides = metrics["sides"]
    log.info("sides: %d of %d volumes' reports name a side; closer to the own report than to it with left and right "
             "swapped: %.3f (95%% CI %.3f-%.3f; chance 0.5), report vs swapped cosine %.3f", sides["n"], len(emb.ids),
             sides["accuracy"], *sides["ci95"], sides["text_cos_swapped"])
    return metrics
