"""Distributed helpers: rank/world queries and the cross-rank feature gather used by the batch-level losses.

The contrastive and relation losses need the global batch. :func:`gather_features` concatenates every rank's
features in rank order; the local shard keeps its autograd graph, the other shards are constants. Every rank
then computes the same global loss, and the gradient reaching the local features equals the gradient of the
single-process loss on the concatenated batch with respect to those rows. Because DistributedDataParallel
*averages* parameter gradients over ranks, multiply such a global loss by ``world_size()`` before
``backward()`` to obtain exactly the single-process gradients (or accept a 1/world scale, as open_clip does).
A parameter used on every rank outside the sharded features (e.g. the contrastive ``logit_scale``) already
receives its whole gradient on each rank, so its gradient must not get that factor (scale it by
``1/world_size()``).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

__all__ = ["cleanup_distributed", "gather_features", "is_distributed", "rank", "setup_distributed", "world_size"]

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def setup_distributed(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``...).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default nccl when CUDA is available, else gloo.

    Returns:
        True if a process group is (now) initialised, False for a plain single process.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend=backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    logger.info("process group up: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def cleanup_distributed() -> None:
    """Destroy the default process group if there is one."""
    if is_distributed():
        dist.destroy_process_group()


def gather_features(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` along dim 0 from every rank, keeping the autograd graph of the local shard.

    Ranks may hold different batch sizes (e.g. a short last batch). Identity when not distributed.

    Args:
        x: (B_r, ...) this rank's tensor (features, labels...), same trailing shape and dtype on all ranks.

    Returns:
        (sum_r B_r, ...) the shards in rank order; rows of this rank are ``x`` itself.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return x
    world, me = dist.get_world_size(), dist.get_rank()
    local = x.detach().contiguous()
    size = torch.tensor([local.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    if local.shape[0] < longest:  # all_gather needs equal shapes: pad, then cut
        pad = local.new_zeros((longest - local.shape[0], *local.shape[1:]))
        local = torch.cat([local, pad], dim=0)
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local)
    shards = [p[:n] for p, n in zip(parts, counts)]
    shards[me] = x
    return torch.cat(shards, dim=0)
