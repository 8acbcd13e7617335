"""Multi-node path: two torchrun launches (--nnodes 2, --node_rank 0 / 1, rendezvous on 127.0.0.1) of one
process each train a tiny tree with Lightning DDP (gloo, CPU); the ranks end with identical weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_one_process_each_train_in_sync(tmp_path):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launches = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc_per_node",
                "1",
                "--node_rank",
                str(rank),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                str(WORKER),
                str(tmp_path),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [launch.communicate(timeout=240)[0] for launch in launches]
    for launch, log in zip(launches, logs):
        assert launch.returncode == 0, log[-4000:]
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["world_size"], r["rank"], r["node_rank"]) for r in results] == [(2, 0, 0), (2, 1, 1)]
    assert results[0]["steps"] == results[1]["steps"] == 4
    assert results[0]["checksum"] == results[1]["checksum"]  # DDP all-reduced every step
