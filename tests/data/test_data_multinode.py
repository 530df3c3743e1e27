"""Two simulated nodes on one machine: two torchrun agents meet at a c10d rendezvous (gloo), and a shard folder
is read exactly once across them (the recipe of docs/scale.md, on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ctxray.data.shards import write_shards

from .test_data_shards import N, make_cache

WORKER = Path(__file__).with_name("multinode_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_rendezvous_and_read_every_volume_once(tmp_path):
    write_shards(make_cache(tmp_path / "cache"), tmp_path / "shards", shard_bytes=40_000)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    port = _free_port()
    agents = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}",
         "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=ctxray-test", "--max-restarts=0",
         str(WORKER), str(tmp_path / "shards"), str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for node in (0, 1)]
    logs = [a.communicate(timeout=240)[0].decode() for a in agents]
    assert all(a.returncode == 0 for a in agents), logs
    ranks = json.loads((tmp_path / "ids.json").read_text())
    assert sorted(r["rank"] for r in ranks) == [0, 1] and sorted(r["group_rank"] for r in ranks) == [0, 1]
    assert all(r["local_rank"] == 0 for r in ranks)  # one process per node
    seen = ranks[0]["ids"] + ranks[1]["ids"]
    assert len(seen) == N and len(set(seen)) == N
