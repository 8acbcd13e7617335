"""cortex.data: rows -> tensors in DataLoader workers (tables and splits, tokenization, collation, samplers,
the Lightning data module)."""

from cortex.data.collate import RootEncoder, TreeBatch, TreeCollator, padded_length
from cortex.data.samplers import (
    EpochShuffleSampler,
    MinorityUpsampler,
    ResumableSampler,
    group_indices,
    round_robin_longest,
)
from cortex.data.tables import ColumnSplit, DropRows, GroupSplit, RandomSplit, TableData, load_table

__all__ = [
    "ColumnSplit",
    "DropRows",
    "EpochShuffleSampler",
    "GroupSplit",
    "MinorityUpsampler",
    "RandomSplit",
    "ResumableDataLoader",
    "ResumableSampler",
    "RootEncoder",
    "TableData",
    "TreeBatch",
    "TreeCollator",
    "TreeDataModule",
    "group_indices",
    "load_table",
    "padded_length",
    "round_robin_longest",
]


def __getattr__(name: str):
    # TreeDataModule imports lightning (seconds); only code that builds loaders pays for it.
    if name in ("TreeDataModule", "ResumableDataLoader"):
        from cortex.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'cortex.data' has no attribute {name!r}")
