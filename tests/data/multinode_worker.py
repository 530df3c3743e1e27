"""Run by torchrun in tests/data/test_data_multinode.py: one process per simulated node.

Joins the c10d rendezvous, reads a shard folder with ShardDataset (rank and world size from torch.distributed,
2 DataLoader workers), gathers every rank's ids and writes them (rank 0) to OUT/ids.json.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader


def main(shards: str, out: str) -> None:
    from ctxray.data.shards import ShardDataset
    from ctxray.train.distributed import cleanup_distributed, setup_distributed

    torch.set_num_threads(1)
    assert setup_distributed("gloo")
    ds = ShardDataset(shards, seed=0, buffer=4, workers=2)
    ids = [i for batch in DataLoader(ds, batch_size=3, num_workers=2) for i in batch["id"]]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"rank": dist.get_rank(), "local_rank": int(os.environ["LOCAL_RANK"]),
                                      "group_rank": int(os.environ["GROUP_RANK"]), "ids": ids})
    if dist.get_rank() == 0:
        with open(os.path.join(out, "ids.json"), "w") as f:
            json.dump(gathered, f)
    cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
