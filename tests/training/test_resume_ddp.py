"""Mid-epoch resume under two-process DDP (gloo, CPU): each rank's sampler shard continues where it stopped.

The checkpoint holds rank 0's loader positions; every rank consumes the same number of batches (equal shards),
so the positions are those of every rank. Run as a script (python test_resume_ddp.py OUT_DIR [CKPT] [KILL]),
this file is the training process Lightning's "ddp" strategy re-launches once per extra rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import KillAfter, Killed, quiet_trainer, tiny_setup

from cortex.training import EMA, NeuralTreeSystem

KILLED_EXIT = 3


class BatchLog(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        labels = tuple(tuple(b.labels[name].flatten().tolist()) for name, b in batch.items())
        self.seen.append((trainer.current_epoch, batch_idx, labels))


def main(out_dir: Path, ckpt_path: str | None, kill_after: int | None) -> None:
    torch.manual_seed(0)
    model, tasks, corruption, datamodule = tiny_setup(num_rows=96, batch_size=8, dropout=0.1)
    system = NeuralTreeSystem(model, tasks, corruption, optim={"lr": 1e-2, "warmup_steps": 2}, seed=3)
    log = BatchLog()
    callbacks = [EMA(decay=0.8), log]
    if kill_after is not None:
        callbacks += [
            KillAfter(kill_after),
            pl.callbacks.ModelCheckpoint(dirpath=out_dir, save_top_k=-1, every_n_train_steps=3),
        ]
    trainer = quiet_trainer(
        out_dir, callbacks, devices=2, strategy="ddp", enable_checkpointing=kill_after is not None
    )
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    except Killed:
        torch.save({"seen": log.seen}, out_dir / f"killed{trainer.global_rank}.pt")
        os._exit(KILLED_EXIT)  # as a crash would: no teardown
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(
        {"seen": log.seen, "state": state, "steps": trainer.global_step},
        out_dir / f"rank{trainer.global_rank}.pt",
    )


def _launch(out_dir: Path, *args: str) -> subprocess.CompletedProcess:
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    command = [sys.executable, str(Path(__file__).resolve()), str(out_dir), *args]
    return subprocess.run(command, cwd=out_dir, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_two_process_ddp_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    result = _launch(tmp_path / "full")
    assert result.returncode == 0, result.stderr[-4000:]
    full = [torch.load(tmp_path / "full" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    batches_per_epoch = len(full[0]["seen"]) // 2
    assert batches_per_epoch == 5  # 72 training rows, 36 per rank, batches of 8
    result = _launch(tmp_path / "part", "-", "7")
    assert result.returncode == KILLED_EXIT, result.stderr[-4000:]
    checkpoint = tmp_path / "part" / "epoch=1-step=6.ckpt"  # batch 6 of 10: mid-epoch 1
    result = _launch(tmp_path / "resumed", str(checkpoint))
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        killed = torch.load(tmp_path / "part" / f"killed{rank}.pt", weights_only=True)
        resumed = torch.load(tmp_path / "resumed" / f"rank{rank}.pt", weights_only=True)
        assert killed["seen"] == full[rank]["seen"][:7]
        assert resumed["seen"] == full[rank]["seen"][6:]
        assert resumed["steps"] == full[rank]["steps"]
        for key, value in full[rank]["state"].items():
            torch.testing.assert_close(resumed["state"][key], value, rtol=0, atol=0, msg=key)
    assert full[0]["seen"] != full[1]["seen"]  # each rank trained on its own shard


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        None if len(sys.argv) < 3 or sys.argv[2] == "-" else sys.argv[2],
        int(sys.argv[3]) if len(sys.argv) > 3 else None,
    )
