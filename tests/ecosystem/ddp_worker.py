"""One node of the 2-node CPU DDP test (launched by torchrun from test_multinode.py): a tiny Lightning run on real
RBD rows, then each rank writes its world size, rank and a checksum of the trained weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.strategies import DDPStrategy

from cortex.data.datamodule import TreeDataModule
from cortex.data.tables import RandomSplit, TableData
from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.tasks import RegressionTask
from cortex.training import NeuralTreeSystem

DATA = Path(__file__).resolve().parents[2] / "data" / "rbd_starr2020_bind_expr.csv.gz"


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    frame = pd.read_csv(DATA, nrows=200)
    frame = frame[~frame["sequence"].str.contains(r"\*")].head(64).copy()
    frame["sequence"] = frame["sequence"].str[:24]
    config = NeuralTreeConfig(
        roots={"protein": {"type": "conv1d", "max_length": 32, "embed_dim": 8, "channel_dim": 8, "out_dim": 8,
                           "num_blocks": 1, "kernel_size": 3}},
        branches={"property": {"type": "mlp", "out_dim": 8, "hidden_dim": 8}},
        leaves={"expr": {"type": "regressor", "branch": "property"}},
    )  # fmt: skip
    model = NeuralTreeModel(config)
    data = TableData(
        frame.reset_index(drop=True), split=RandomSplit({"train": 0.75, "validation": 0.25}, seed=0)
    )
    tasks = [RegressionTask("expr", "expr", {"protein": "sequence"}, ["expr_delta_meanF"], data=data)]
    system = NeuralTreeSystem(model, tasks, optim={"lr": 1e-2, "warmup_steps": 0})
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=4,
        limit_val_batches=0,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(system, datamodule=TreeDataModule(tasks, model=model, batch_size=8, seed=0))
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    result = {"world_size": trainer.world_size, "rank": trainer.global_rank, "node_rank": trainer.node_rank,
              "steps": trainer.global_step, "checksum": checksum}  # fmt: skip
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
