"""Tiny real trees on a slice of the bundled RBD data, shared by the training and CLI tests."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd

from cortex.corruption import MaskCorruption
from cortex.data.datamodule import TreeDataModule
from cortex.data.tables import DropRows, RandomSplit, TableData
from cortex.data.tokenization import ProteinTokenizer
from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.tasks.regression import RegressionTask

DATA = Path(__file__).resolve().parents[2] / "data" / "rbd_starr2020_bind_expr.csv.gz"
WINDOW = 24  # residues of the RBD kept per row: short sequences keep the tests fast


def rbd_slice(num_rows: int = 96, offset: int = 0) -> pd.DataFrame:
    """`num_rows` real RBD mutants (no stop codons) whose sequences are cut to the first WINDOW residues."""
    frame = pd.read_csv(DATA)
    frame = frame[~frame["sequence"].str.contains(r"\*")].iloc[offset : offset + num_rows].copy()
    frame["sequence"] = frame["sequence"].str[:WINDOW]
    return frame.reset_index(drop=True)


def tiny_config(ensemble_size: int = 2, dropout: float = 0.0) -> NeuralTreeConfig:
    return NeuralTreeConfig(
        roots={
            "protein": {
                "type": "conv1d",
                "max_length": 32,
                "embed_dim": 8,
                "channel_dim": 8,
                "out_dim": 8,
                "num_blocks": 1,
                "kernel_size": 3,
                "dropout": dropout,
            }
        },
        trunk={"type": "sum", "roots": ["protein"]},
        branches={
            "property": {
                "type": "mlp",
                "out_dim": 8,
                "hidden_dim": 8,
                "ensemble_size": ensemble_size,
                "dropout": dropout,
            }
        },
        leaves={
            "bind": {"type": "regressor", "branch": "property", "out_dim": 1},
            "expr": {"type": "regressor", "branch": "property", "out_dim": 1},
        },
    )


def tiny_setup(num_rows: int = 96, batch_size: int = 16, dropout: float = 0.0):
    """(model, tasks, corruption, datamodule) for a two-task regression tree on real RBD rows."""
    model = NeuralTreeModel(tiny_config(dropout=dropout))
    frame = rbd_slice(num_rows)
    data = TableData(
        frame,
        split=RandomSplit({"train": 0.75, "validation": 0.25}, seed=0),
        filters=[DropRows("sequence", r"\*")],
    )
    tasks = [
        RegressionTask(
            "bind",
            "bind",
            {"protein": "sequence"},
            ["bind_delta_log10Ka"],
            label_smoothing="noise_level",
            data=data,
        ),
        RegressionTask("expr", "expr", {"protein": "sequence"}, ["expr_delta_meanF"], data=data),
    ]
    corruption = {"protein": MaskCorruption(ProteinTokenizer().mask_token_id)}
    datamodule = TreeDataModule(tasks, model=model, batch_size=batch_size, seed=0, eval_batch_size=64)
    return model, tasks, corruption, datamodule


class Killed(RuntimeError):
    """What `KillAfter` raises: a crash in the middle of training."""


class KillAfter(pl.Callback):
    """Ends training abruptly (an exception, as a crash would) once `steps` optimizer steps are done."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.steps:
            raise Killed(f"killed after {trainer.global_step} steps")


def quiet_trainer(root, callbacks, max_epochs: int = 2, deterministic: bool = True, **kwargs) -> pl.Trainer:
    """A CPU Trainer without logger, progress bar, summary, sanity check or distributed sampler (cortex samplers
    shard themselves); deterministic unless told otherwise."""
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        callbacks=list(callbacks),
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=deterministic,
        default_root_dir=root,
        **kwargs,
    )
