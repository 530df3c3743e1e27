"""The volume cache: preprocess work items in parallel into memory-mappable arrays plus a manifest.

Layout of a cache folder ``C`` (``docs/architecture.md``)::

    C/spec.json                     the PreprocessSpec every array was made with
    C/volumes/{id}.npy              (D, H, W) in the spec's dtype, plain .npy (np.load(mmap_mode="r"))
    C/manifest.jsonl                one JSON object per volume, sorted by id
    C/errors.log                    one line per failed input: "<file>: <reason>"
    C/manifests/shard-K-of-N.jsonl, C/errors/shard-K-of-N.log    per shard, merged by merge_shards()
    C/journal/*.jsonl               entries appended as volumes finish (resume after a kill)

Every array is written to a temporary name and renamed, and its SHA-256 goes to the manifest; a re-run
reuses an entry only if its file is there with the same spec and (``verify="checksum"``) the same
checksum, so a killed run or a corrupted file is redone and nothing half-written looks done.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ctxray.data.cachedir import MANIFEST_FILE, SPEC_FILE
from ctxray.data.dicom import redact
from ctxray.data.ingest import WorkItem, read_item
from ctxray.data.spec import PreprocessSpec
from ctxray.data.validate import validate_raw
from ctxray.data.volume import RawVolume, VolumeReadError
from ctxray.utils.io import atomic_write, atomic_write_text, sha256_file
from ctxray.utils.progress import progress

log = logging.getLogger(__name__)

Verify = Literal["checksum", "size"]


@dataclass
class CacheRun:
    """What a preprocess run did."""

    written: int
    reused: int
    errors: list[str]
    manifest: Path
    seconds: float


def spec_hash(spec: PreprocessSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def shard_index(item_id: str, n: int) -> int:
    """Deterministic shard (0-based) of an id, independent of which other ids exist."""
    return int(hashlib.sha256(item_id.encode()).hexdigest()[:12], 16) % n


def shard_tag(shard: tuple[int, int] | None) -> str:
    return "all" if shard is None else f"shard-{shard[0]}-of-{shard[1]}"


def read_jsonl(path: Path) -> list[dict]:
    """Entries of a JSONL file; a torn last line (killed writer) is ignored."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            log.debug("%s: ignoring a torn line", path)
    return out


def check_raw(raw: RawVolume, where: str) -> None:
    """Reject volumes no resampling can save (:func:`ctxray.data.validate.validate_raw`).

    Raises:
        VolumeReadError: naming ``where`` and the reason.
    """
    validate_raw(raw, where)


def write_npy(path: Path, arr: np.ndarray) -> tuple[str, int]:
    """Write ``arr`` as a .npy file atomically, hashing while writing (no in-memory copy of the file).

    Returns:
        (hex SHA-256 of the file, its size in bytes).
    """
    arr = np.ascontiguousarray(arr)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, np.lib.format.header_data_from_array_1_0(arr))
    header = head.getvalue()
    body = memoryview(arr.reshape(-1).view(np.uint8))
    digest = hashlib.sha256(header)
    digest.update(body)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(header)
            f.write(body)

    atomic_write(path, write)
    return digest.hexdigest(), len(header) + body.nbytes


def write_npy_slices(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, slices: Iterable[np.ndarray], check: Callable[[], None]
) -> tuple[str, int]:
    """Write an array given slice by slice as a .npy file atomically, hashing as it goes; ``check`` runs after
    the last slice and may raise, and then no file is left. Same bytes as :func:`write_npy` of the whole array.

    Returns:
        (hex SHA-256 of the file, its size in bytes).
    """
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    header = head.getvalue()
    digest = hashlib.sha256(header)
    nbytes = len(header)

    def write(tmp: Path) -> None:
        nonlocal nbytes
        n = 0
        with open(tmp, "wb") as f:
            f.write(header)
            for sl in slices:
                sl = np.ascontiguousarray(sl, dtype=dtype)
                if sl.shape != tuple(shape[1:]):
                    raise ValueError(f"slice {n} has shape {sl.shape}, expected {tuple(shape[1:])}")
                body = memoryview(sl.reshape(-1).view(np.uint8))
                digest.update(body)
                f.write(body)
                nbytes += body.nbytes
                n += 1
        if n != shape[0]:
            raise ValueError(f"{n} slices written, expected {shape[0]}")
        check()

    atomic_write(path, write)
    return digest.hexdigest(), nbytes


def process_item(item: WorkItem, spec: PreprocessSpec, cache_dir: Path) -> dict:
    """Read, check, resample and write one volume. Returns its manifest entry.

    Raises:
        VolumeReadError / ValueError: naming the input and the reason.
    """
    raw = read_item(item)
    check_raw(raw, item.source)
    stream = spec.apply_encoded_slices(raw.values, raw.spacing_zyx, slope=raw.slope, intercept=raw.intercept)

    def check() -> None:  # once every slice is written, before the file gets its name
        lo, hi = stream.value_range()
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise VolumeReadError(item.source, "non-finite values after resampling")
        if hi - lo < 1e-6:
            hu = spec.hu_min + lo * (spec.hu_max - spec.hu_min)
            raise VolumeReadError(item.source, f"volume is constant after windowing (all {hu:.0f} HU): wrong rescale?")

    rel = f"volumes/{item.id}.npy"
    sha, nbytes = write_npy_slices(cache_dir / rel, spec.shape_zyx, np.dtype(spec.dtype), stream.slices, check)
    entry = {
        "id": item.id, "file": rel, "shape": list(spec.shape_zyx),
        "spacing": [round(float(s), 6) for s in spec.output_grid(raw.values.shape, raw.spacing_zyx)[1]],
        "preset": spec.name, "spec_hash": spec_hash(spec), "dtype": spec.dtype,
        "sha256": sha, "nbytes": nbytes,
        "orig_shape": list(raw.values.shape), "orig_spacing": [round(float(s), 6) for s in raw.spacing_zyx],
        "rescale": [raw.slope, raw.intercept],
    }
    return with_metadata(entry, item)


def with_metadata(entry: dict, item: WorkItem) -> dict:
    """Entry with the item's current source, split, report, labels and scan id (re-read on every run)."""
    labels = None if item.labels is None else [None if np.isnan(v) else float(v) for v in item.labels]
    return {**entry, "source": item.source, "split": item.split, "report": item.report, "labels": labels,
            "scan_id": item.scan_id or item.id, **item.extra}


def entry_is_valid(entry: dict | None, spec: PreprocessSpec, cache_dir: Path, verify: Verify) -> bool:
    if not entry or entry.get("spec_hash") != spec_hash(spec):
        return False
    path = cache_dir / entry["file"]
    if not path.is_file() or path.stat().st_size != entry.get("nbytes"):
        return False
    return verify == "size" or sha256_file(path) == entry.get("sha256")


def _work(task: tuple[WorkItem, dict | None, PreprocessSpec, Path, Verify]) -> tuple[str, dict | str]:
    """Worker: reuse a valid cached entry or (re)make it. Never raises for a bad input."""
    item, known, spec, cache_dir, verify = task
    try:
        if entry_is_valid(known, spec, cache_dir, verify):
            return "reused", with_metadata(known, item)
        return "written", process_item(item, spec, cache_dir)
    except Exception as err:  # one bad input must not stop the batch
        msg = str(err) if isinstance(err, VolumeReadError) else f"{item.source}: {type(err).__name__}: {err}"
        if item.kind == "dicom":  # a library message may quote a path holding patient identifiers
            msg = redact(msg, item.payload.identifiers)
        return "error", " ".join(msg.split())


def _init_worker(threads: int, parent_pid: int | None = None) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, threads)))
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()


def _exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Worker side: exit as soon as the parent is gone (``kill -9`` of ``preprocess`` must not leave workers
    running for hours); the worker is re-parented then, so its parent pid changes."""
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def run_tasks(tasks: list, workers: int) -> Iterator[tuple[str, dict | str]]:
    """Results of ``_work`` over tasks (unordered with workers > 1); a crashed worker costs only its task."""
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    if workers <= 1:
        _init_worker(threads)
        for t in tasks:
            yield _work(t)
        return
    import concurrent.futures as cf  # here: one worker (a single DICOM series) does not pay for the imports
    import multiprocessing as mp

    todo = list(reversed(tasks))
    ctx = mp.get_context("spawn")
    while todo:
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                    initargs=(threads, os.getpid()), max_tasks_per_child=64) as ex:
            running: dict[cf.Future, tuple] = {}
            broken = False
            while (todo or running) and not broken:
                while todo and len(running) < 2 * workers:
                    t = todo.pop()
                    running[ex.submit(_work, t)] = t
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    t = running.pop(fut)
                    try:
                        yield fut.result()
                    except cf.process.BrokenProcessPool:
                        broken = True
                        yield "error", f"{t[0].source}: worker process died (out of memory?)"
            todo.extend(running.values())  # in flight when the pool broke: retry in a new pool


def _known_entries(cache_dir: Path) -> dict[str, dict]:
    known: dict[str, dict] = {}
    sources = [cache_dir / MANIFEST_FILE, *sorted((cache_dir / "manifests").glob("*.jsonl")),
               *sorted((cache_dir / "journal").glob("*.jsonl"))]
    for path in sources:
        for e in read_jsonl(path):
            if "id" in e and "file" in e:
                known[e["id"]] = e
    return known


def prepare_cache(cache_dir: Path, spec: PreprocessSpec) -> None:
    """Create the folder and its spec.json, or check that an existing cache used the same spec."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / "volumes").mkdir(exist_ok=True)
    spec_path = cache_dir / SPEC_FILE
    if spec_path.is_file():
        old = PreprocessSpec.load(spec_path)
        if old != spec:
            raise ValueError(f"{spec_path}: this cache was made with spec {old.to_dict()}, not {spec.to_dict()}; "
                             "use another --out")
    else:
        spec.save(spec_path)
    # Temporary files of killed runs (a live run's are younger than a day: shards may share the folder).
    for tmp in (cache_dir / "volumes").glob(".*.tmp*"):
        if time.time() - tmp.stat().st_mtime > 86400:
            tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(cache_dir: Path, ids: set[str]) -> None:
    """Delete ``volumes/.{id}.XXXX.tmp.npy`` left by a killed run, for this run's ids only (a concurrent
    shard writes other ids, so its temporaries are left alone)."""
    n = 0
    for tmp in (cache_dir / "volumes").glob(".*.tmp.npy"):
        if tmp.name[1:].removesuffix(".tmp.npy").rsplit(".", 1)[0] in ids:
            tmp.unlink(missing_ok=True)
            n += 1
    if n:
        log.info("%s: removed %d temporary file(s) of an interrupted run", cache_dir / "volumes", n)


def build_cache(
    items: list[WorkItem],
    cache_dir: str | Path,
    spec: PreprocessSpec,
    *,
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    verify: Verify = "checksum",
    prior_errors: Iterable[str] = (),
) -> CacheRun:
    """Preprocess ``items`` into ``cache_dir``, reusing valid cached volumes.

    Args:
        items: from :func:`ctxray.data.ingest.discover`.
        shard: ``(K, N)``, 1-based: only items whose id hashes to shard K of N; the manifest goes to
            ``manifests/shard-K-of-N.jsonl`` for :func:`merge_shards`.
        verify: how cached files are checked before reuse (``checksum`` reads them; ``size`` is fast).
        prior_errors: error lines from discovery, written to the error log first.
    """
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    prepare_cache(cache_dir, spec)
    if shard is not None:
        k, n = shard
        if not 1 <= k <= n:
            raise ValueError(f"--shard {k}/{n}: K must be between 1 and N")
        items = [it for it in items if shard_index(it.id, n) == k - 1]
    tag = shard_tag(shard)
    manifest = cache_dir / MANIFEST_FILE if shard is None else cache_dir / "manifests" / f"{tag}.jsonl"
    errors_path = cache_dir / "errors.log" if shard is None else cache_dir / "errors" / f"{tag}.log"
    journal = cache_dir / "journal" / f"{tag}.jsonl"
    for p in (manifest, errors_path, journal):
        p.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(cache_dir, {it.id for it in items})
    known = _known_entries(cache_dir)
    tasks = [(it, known.get(it.id), spec, cache_dir, verify) for it in sorted(items, key=lambda i: i.id)]
    entries: dict[str, dict] = {}
    errors = list(prior_errors)
    counts = {"written": 0, "reused": 0, "error": 0}
    with open(errors_path, "w") as err_f, open(journal, "a") as jf:
        for line in errors:
            err_f.write(line + "\n")
        results = run_tasks(tasks, workers)
        if len(tasks) > 1:  # no bar (nor its import) for a single volume, e.g. one DICOM series
            results = progress(results, total=len(tasks), desc="preprocess", unit="vol")
        for status, payload in results:
            counts[status] += 1
            if status == "error":
                errors.append(payload)
                err_f.write(payload + "\n")
                err_f.flush()
                log.warning("%s", payload)
                continue
            entries[payload["id"]] = payload
            if status == "written":  # a reused entry is already where it was found: the journal does not grow
                jf.write(json.dumps(payload) + "\n")
                jf.flush()
    lines = "".join(json.dumps(entries[i]) + "\n" for i in sorted(entries))
    atomic_write_text(manifest, lines)
    journal.unlink(missing_ok=True)
    dt = time.perf_counter() - t0
    log.info("%s: %d written, %d reused, %d error(s) in %.1f s (%.2f vol/s); manifest %s", cache_dir,
             counts["written"], counts["reused"], len(errors), dt, len(tasks) / max(dt, 1e-9), manifest)
    return CacheRun(counts["written"], counts["reused"], errors, manifest, dt)


def merge_shards(cache_dir: str | Path, verify: Verify = "size") -> tuple[Path, list[str]]:
    """Merge ``manifests/shard-K-of-N.jsonl`` (and their error logs) into ``manifest.jsonl``/``errors.log``.

    Returns:
        (manifest path, problems: missing shards or entries whose file is absent or fails ``verify``).

    Raises:
        ValueError: no shard manifests, or shards of different N mixed.
    """
    cache_dir = Path(cache_dir)
    spec = PreprocessSpec.load(cache_dir / SPEC_FILE)
    shards = sorted((cache_dir / "manifests").glob("shard-*-of-*.jsonl"))
    if not shards:
        raise ValueError(f"{cache_dir / 'manifests'}: no shard manifests to merge")
    ns = {int(p.stem.split("-of-")[1]) for p in shards}
    if len(ns) != 1:
        raise ValueError(f"{cache_dir / 'manifests'}: shards of different counts {sorted(ns)} mixed")
    n = ns.pop()
    have = {int(p.stem.split("-")[1]) for p in shards}
    problems = [f"{cache_dir / 'manifests'}: shard {k}/{n} missing" for k in range(1, n + 1) if k not in have]
    entries: dict[str, dict] = {}
    for p in shards:
        for e in read_jsonl(p):
            if entry_is_valid(e, spec, cache_dir, verify):
                entries[e["id"]] = e
            else:
                problems.append(f"{cache_dir / e.get('file', '?')}: cached file missing or corrupt (id {e.get('id')})")
    atomic_write_text(cache_dir / MANIFEST_FILE, "".join(json.dumps(entries[i]) + "\n" for i in sorted(entries)))
    logs = sorted((cache_dir / "errors").glob("shard-*-of-*.log"))
    text = "".join(p.read_text() for p in logs) + "".join(line + "\n" for line in problems)
    atomic_write_text(cache_dir / "errors.log", text)
    log.info("%s: merged %d shard(s) of %d: %d volumes, %d problem(s)", cache_dir, len(have), n, len(entries),
             len(problems))
    return cache_dir / MANIFEST_FILE, problems
