"""What every task does: bind dataset columns to roots (`inputs`) and to a leaf (labels), check and clean its
rows, turn rows into label tensors in DataLoader workers, and own its loss and metrics.

A task never holds the model: `loss`, `metrics` and `fit` receive the leaf module and the model outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from cortex.data.tables import require_columns

logger = logging.getLogger(__name__)


class Task:
    """Base of the four task kinds.

    Args:
        name: task name, the key of its labels in a `TreeBatch` and the prefix of its metrics.
        leaf: name of the model leaf this task trains.
        inputs: root name -> dataset column holding that root's sequences.
        data: where its rows come from (`cortex.data.TableData`), or None when the data module is given the
            rows directly.
    """

    label_columns: tuple[str, ...] = ()

    def __init__(self, name: str, leaf: str, inputs: Mapping[str, str], data: Any = None) -> None:
        if not inputs:
            raise ValueError(f"task {name!r}: inputs is empty; expected a mapping root -> column")
        for root, column in inputs.items():
            if not isinstance(column, str):
                raise ValueError(
                    f"task {name!r}: root {root!r} is fed {column!r}; expected one column name (a string)"
                )
        self.name = name
        self.leaf = leaf
        self.inputs = dict(inputs)
        self.data = data

    @property
    def root(self) -> str:
        """The first input root (whose noise level drives label smoothing)."""
        return next(iter(self.inputs))

    def prepare(self, frame: pd.DataFrame, *, split: str) -> pd.DataFrame:
        """Checks columns and labels of one split, returns the rows the task trains or evaluates on.

        Raises ValueError for a missing column (listing the available ones), bad labels (naming row, column
        and value), or a split that has rows but none labelled for this task.
        """
        where = f"task {self.name!r} split {split!r}"
        require_columns(frame, [*self.inputs.values(), *self.label_columns], where=where)
        frame = self.clean_labels(frame, where=where)
        labelled = self.is_labelled(frame)
        if len(frame) > 0 and not labelled.any():
            raise ValueError(
                f"{where}: none of its {len(frame)} rows has a label in {list(self.label_columns)}; expected at "
                "least one labelled row"
            )
        if not labelled.all():
            logger.info("%s: leaving out %d rows without labels", where, int((~labelled).sum()))
        return frame.loc[labelled].reset_index(drop=True)

    def clean_labels(self, frame: pd.DataFrame, *, where: str) -> pd.DataFrame:
        """Converts label columns to their numeric form; raises ValueError on a bad value."""
        return frame

    def is_labelled(self, frame: pd.DataFrame) -> pd.Series:
        """(rows,) bool: rows with at least one label (all rows for LM tasks)."""
        return pd.Series(True, index=frame.index)

    def collate_labels(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor | None:
        """Label tensor of a batch (rows already cleaned by `prepare`), or None for LM tasks."""
        return None

    def fit(self, leaf: torch.nn.Module, train: pd.DataFrame) -> None:
        """Fits leaf state on the training split only (regression: target standardisation); no-op otherwise."""

    def loss(self, leaf: torch.nn.Module, outputs: Any, batch: Any) -> torch.Tensor:
        """Scalar training loss of `leaf` given the model outputs (`NeuralTreeOutput`) and the `TreeBatch`."""
        raise NotImplementedError(f"{type(self).__name__} does not define loss")

    def metrics(self, outputs: Any, batch: Any) -> dict[str, float]:
        """Evaluation metrics of one batch, named without the task prefix."""
        raise NotImplementedError(f"{type(self).__name__} does not define metrics")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, leaf={self.leaf!r}, inputs={self.inputs})"
