"""Two-process DDP (gloo, CPU) training of a tiny tree on real RBD rows, launched by test_ddp.py.

Usage: python ddp_run.py OUT_DIR. Lightning's "ddp" strategy re-runs this script once per extra rank; every
rank writes OUT_DIR/rank<r>.pt with the row indices its samplers drew, the labels its batches held and its
final model weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import quiet_trainer, tiny_setup

from cortex.training import NeuralTreeSystem


class Record(pl.Callback):
    """Per epoch: each task's sampler indices on this rank; per batch: each task's labels."""

    def __init__(self) -> None:
        self.indices: dict[str, list[list[int]]] = {}
        self.labels: dict[str, list[torch.Tensor]] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        for name, loader in trainer.train_dataloader.items():
            self.indices.setdefault(name, []).append(
                list(loader.sampler.epoch_indices(trainer.current_epoch))
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        for name, task_batch in batch.items():
            self.labels.setdefault(name, []).append(task_batch.labels[name].clone())


def main(out_dir: Path) -> None:
    pl.seed_everything(0)
    model, tasks, corruption, datamodule = tiny_setup(num_rows=96, batch_size=12)
    system = NeuralTreeSystem(model, tasks, corruption, optim={"lr": 1e-2})
    record = Record()
    trainer = quiet_trainer(
        out_dir, [record], deterministic=False, devices=2, strategy="ddp", enable_checkpointing=False
    )
    trainer.fit(system, datamodule=datamodule)
    frames = {name: datamodule.frames[name]["train"] for name in record.indices}
    torch.save(
        {
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "indices": record.indices,
            "labels": {name: torch.cat(values) for name, values in record.labels.items()},
            "train_labels": {
                task.name: torch.tensor(
                    frames[task.name][list(task.label_columns)].to_numpy(), dtype=torch.float32
                )
                for task in tasks
            },
            "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
