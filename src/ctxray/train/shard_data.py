"""Training from tar shards (``data.shards``): the train split streamed exactly once per epoch over ranks x workers.

A shard set (``ctxray shard CACHE --out S --split train``) carries what a run needs besides the volumes: the
preprocessing spec (``shards.json``), every report and label (``meta.jsonl``, for the tokenizer and the report
checks) and the ids the teacher targets are looked up by. Validation reads ``data.val_shards`` (a shard set of the
validation split), or else ``data.cache``'s validation split, or is skipped. :class:`ShardEpochs` starts each epoch,
counts what the loop consumed and gives the position saved in ``last`` for a mid-epoch resume.
"""

from __future__ import annotations

import logging
from typing import Any

from ctxray.data.cachedir import read_manifest
from ctxray.data.shards import INDEX, ShardDataset, ShardProgress, epoch_slices, read_index, read_rows

log = logging.getLogger(__name__)


def open_shard_index(url: str, split: str, setting: str) -> dict[str, Any]:
    """Read a shard set's ``shards.json`` and check it holds exactly ``split``.

    Args:
        url: the shard folder (local path or fsspec URL).
        split: the split the run expects there (``data.train_split`` / ``data.val_split``).
        setting: the config key it came from, named in errors.

    Returns:
        The index.

    Raises:
        FileNotFoundError, ValueError: naming the setting and the folder.
    """
    try:
        index = read_index(url)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{setting}={url}: no {INDEX} there ({err.strerror or err}); write a shard set with "
                                f"`ctxray shard CACHE --out {url} --split {split}`") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{setting}={url}: cannot read its {INDEX}: {err}") from None
    if index.get("split") != split:
        held = "every split" if index.get("split") is None else f"split {index.get('split')!r}"
        raise ValueError(f"{setting}={url} holds {held}, the run reads split {split!r} from it; write it with "
                         f"`ctxray shard CACHE --out DIR --split {split}`")
    return index


def train_rows(config: Any, cache: Any = None) -> list[dict[str, Any]]:
    """The training split's rows (``id``, ``report``, ``labels``, ...), from the shard set or the cache manifest."""
    da = config.data
    if da.shards:
        return read_rows(da.shards, open_shard_index(da.shards, da.train_split, "data.shards"))

    return cache.split(da.train_split) if cache is not None else read_manifest(da.cache, da.train_split)


class ShardEpochs:
    """A :class:`ShardDataset` driven epoch by epoch by the trainer, with its resumable position.

    Every rank takes the same number of micro-batches per epoch (DDP steps together): the smallest number of full
    batches any rank's workers produce. Slice sizes depend only on the volume count, ranks and workers, so this
    is the same every epoch; the few volumes left over (at most ``ranks x workers x batch``) differ by epoch.

    Args:
        dataset: the training split's stream (built with ``workers=``).
        batch_size: volumes per micro-batch per rank.
    """

    def __init__(self, dataset: ShardDataset, batch_size: int) -> None:
        self.dataset = dataset
        w = max(1, dataset.workers or 0)
        sizes = [len(s) for s in epoch_slices(dataset.counts, 0, 0, dataset.world_size, w)]
        per_rank = [sum(n // batch_size for n in sizes[r * w:(r + 1) * w]) for r in range(dataset.world_size)]
        self.micro_batches = min(per_rank) if per_rank else 0
        self.left_out = sum(sizes) - self.micro_batches * batch_size * dataset.world_size
        self.progress = ShardProgress(dataset)

    def start(self, epoch: int) -> None:
        """Begin epoch ``epoch`` (from the loaded position when it is the resumed epoch)."""
        self.dataset.set_epoch(epoch)
        self.progress = ShardProgress(self.dataset)

    def update(self, batch: dict[str, Any]) -> None:
        """Count a micro-batch the loop consumed (its collated ``slot`` values)."""
        self.progress.update(batch)

    def state_dict(self) -> dict[str, Any]:
        """This rank's position (JSON-ready; merge every rank's with :func:`merge_states`)."""
        return self.progress.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue mid-epoch from a merged position (same ranks and workers per rank, else ``ValueError``)."""
        self.dataset.load_state_dict(state)


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One position from every rank's :meth:`ShardEpochs.state_dict` (their slots are disjoint)."""
    merged = {**states[0], "consumed": {}, "next": {}}
    for s in states:
        merged["consumed"].update(s["consumed"])
        merged["next"].update(s.get("next", {}))
    return merged


def build_shard_train(config: Any, rank: int, world_size: int) -> tuple[ShardDataset, ShardEpochs]:
    """The training stream of ``data.shards`` for this rank, and its epoch driver.

    Raises:
        ValueError: settings the stream cannot honour, or fewer volumes than a batch per rank.
    """
    da = config.data
    open_shard_index(da.shards, da.train_split, "data.shards")
    ds = ShardDataset(da.shards, seed=config.seed, buffer=da.shard_buffer, augment=da.augment, rank=rank,
                      world_size=world_size, workers=da.num_workers)
    epochs = ShardEpochs(ds, da.batch_size)
    if epochs.micro_batches < 1:
        raise ValueError(f"data.shards={da.shards}: {len(ds.members)} volumes over {world_size} rank(s) x "
                         f"{max(1, da.num_workers)} worker(s) give no full batch of data.batch_size={da.batch_size}")
    if epochs.left_out and rank == 0:
        log.info("%s: %d of %d volumes are left out of each epoch (different ones each epoch): ranks x workers "
                 "slices cut into whole batches of %d", da.shards, epochs.left_out, len(ds.members), da.batch_size)
    return ds, epochs


def build_shard_val(config: Any, rank: int, world_size: int) -> ShardDataset:
    """This rank's share of the validation shard set ``data.val_shards`` (stream order, no augmentation)."""
    da = config.data
    open_shard_index(da.val_shards, da.val_split, "data.val_shards")
    return ShardDataset(da.val_shards, seed=config.seed, buffer=1, rank=rank, world_size=world_size,
                        workers=da.num_workers)
