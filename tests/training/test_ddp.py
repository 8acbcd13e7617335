"""Lightning DDP with two CPU processes over gloo: each rank trains on its own shard of every task's rows,
gradients are averaged, and both ranks end with identical weights that moved away from the start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import tiny_config

from cortex.model import NeuralTreeModel

SCRIPT = Path(__file__).parent / "ddp_run.py"


def test_two_process_ddp_trains_on_shards_and_ends_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # Both ranks took the same number of optimizer steps (DDP needs it) and it is not zero.
    assert ranks[0]["global_step"] == ranks[1]["global_step"] > 0
    for task, epochs0 in ranks[0]["indices"].items():
        epochs1 = ranks[1]["indices"][task]
        train_labels = ranks[0]["train_labels"][task]
        num_rows = train_labels.shape[0]
        for indices0, indices1 in zip(epochs0, epochs1, strict=True):
            # Each rank draws its own half (ceil(n / 2), DistributedSampler-style wrap for odd n) ...
            assert len(indices0) == len(indices1) == -(-num_rows // 2)
            assert len(set(indices0) & set(indices1)) <= num_rows % 2
            assert set(indices0) | set(indices1) == set(range(num_rows))
        # ... and the batches it trained on hold exactly those rows' labels, in sampler order.
        for rank in ranks:
            drawn = torch.cat([rank["train_labels"][task][idx] for idx in rank["indices"][task]])
            torch.testing.assert_close(
                rank["labels"][task], drawn[: rank["labels"][task].shape[0]], equal_nan=True
            )
    # Gradients were all-reduced: identical weights on both ranks, different from a fresh initialisation.
    fresh = NeuralTreeModel(tiny_config()).state_dict()
    moved = 0
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][key], rtol=0, atol=0)
        if value.is_floating_point() and value.shape == fresh[key].shape:
            moved += int(not torch.allclose(value, fresh[key]))
    assert moved > 0
