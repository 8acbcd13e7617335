"""Tiny real trees and real RBD rows shared by the ecosystem tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.tasks import ClassificationTask, RegressionTask

DATA = Path(__file__).resolve().parents[2] / "data" / "rbd_starr2020_bind_expr.csv.gz"
WINDOW = 24  # residues kept per row: short sequences keep the tests fast


def rbd_slice(num_rows: int = 128, offset: int = 0) -> pd.DataFrame:
    """`num_rows` real RBD single mutants (no stop codons), sequences cut to the first WINDOW residues."""
    frame = pd.read_csv(DATA)
    frame = frame[~frame["sequence"].str.contains(r"\*")].iloc[offset : offset + num_rows].copy()
    frame["sequence"] = frame["sequence"].str[:WINDOW]
    frame["binds"] = (frame["bind_delta_log10Ka"] > -0.1).astype("int64")
    return frame.reset_index(drop=True)


def tiny_config(root_type: str = "conv1d", ensemble_size: int = 2) -> NeuralTreeConfig:
    root = {"type": root_type, "max_length": 32, "embed_dim": 16, "channel_dim": 16, "out_dim": 16}
    root |= (
        {"num_blocks": 1, "kernel_size": 3} if root_type == "conv1d" else {"num_blocks": 2, "num_heads": 2}
    )
    return NeuralTreeConfig(
        roots={"protein": root},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={
            "property": {"type": "mlp", "out_dim": 16, "hidden_dim": 16, "ensemble_size": ensemble_size}
        },
        leaves={
            "bind": {"type": "regressor", "branch": "property", "out_dim": 1},
            "expr": {"type": "regressor", "branch": "property", "out_dim": 1},
            "binds": {"type": "classifier", "branch": "property", "num_classes": 2},
        },
    )


def tiny_model(root_type: str = "conv1d", ensemble_size: int = 2) -> NeuralTreeModel:
    return NeuralTreeModel(tiny_config(root_type, ensemble_size))


def rbd_tasks() -> list:
    """Two regression tasks and one classification task on the RBD columns."""
    return [
        RegressionTask("bind", "bind", {"protein": "sequence"}, ["bind_delta_log10Ka"]),
        RegressionTask("expr", "expr", {"protein": "sequence"}, ["expr_delta_meanF"]),
        ClassificationTask("binds", "binds", {"protein": "sequence"}, label="binds", num_classes=2),
    ]
