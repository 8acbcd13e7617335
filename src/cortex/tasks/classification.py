"""Classification: one class label per row for a `classifier` leaf; -100 marks a missing label."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

from cortex.tasks.task import Task

IGNORE_INDEX = -100


class ClassificationTask(Task):
    """Class labels for a `classifier` leaf.

    Args:
        label: the label column.
        num_classes: K, the leaf's `num_classes`.
        classes: optional list of the K label values in class-id order (e.g. ["dark", "bright"]); without it
            the column must hold integers in [0, K).
        label_smoothing: a float, or "noise_level" to smooth each row by its root's noise level.
        (name, leaf, inputs, data: see `Task`.)
    """

    def __init__(
        self,
        name: str,
        leaf: str,
        inputs: Mapping[str, str],
        label: str,
        num_classes: int,
        classes: Sequence[Any] | None = None,
        label_smoothing: float | str = 0.0,
        data: Any = None,
    ) -> None:
        super().__init__(name, leaf, inputs, data)
        if num_classes < 2:
            raise ValueError(f"task {name!r}: num_classes={num_classes}; expected at least 2")
        if classes is not None and len(classes) != num_classes:
            raise ValueError(
                f"task {name!r}: {len(classes)} classes {list(classes)} for num_classes={num_classes}"
            )
        if isinstance(label_smoothing, str) and label_smoothing != "noise_level":
            raise ValueError(
                f"task {name!r}: label_smoothing={label_smoothing!r}; expected a float or 'noise_level'"
            )
        self.label_columns = (label,)
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else None
        self.label_smoothing = label_smoothing
        self.smooth_by_noise_level = label_smoothing == "noise_level"

    def clean_labels(self, frame: pd.DataFrame, *, where: str) -> pd.DataFrame:
        (column,) = self.label_columns
        raw = frame[column]
        missing = raw.isna().to_numpy()
        if self.classes is not None:
            lookup = {value: i for i, value in enumerate(self.classes)}
            codes = np.array([lookup.get(v, -1) if not m else IGNORE_INDEX for v, m in zip(raw, missing)])
            bad = codes == -1
            expected = f"one of {self.classes}"
        else:
            numeric = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
            valid = (
                ~np.isnan(numeric)
                & (numeric == np.round(numeric))
                & (numeric >= 0)
                & (numeric < self.num_classes)
            )
            bad = ~missing & ~valid
            codes = np.where(valid, np.nan_to_num(numeric), IGNORE_INDEX).astype(np.int64)
            expected = f"an integer class id in [0, {self.num_classes})"
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{where}: label column {column!r} row {row} is {raw.tolist()[row]!r}; expected {expected}"
            )
        frame = frame.copy()
        frame[column] = codes.astype(np.int64)
        return frame

    def is_labelled(self, frame: pd.DataFrame) -> pd.Series:
        return frame[self.label_columns[0]] != IGNORE_INDEX

    def collate_labels(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """(B,) int64, -100 = missing."""
        (column,) = self.label_columns
        return torch.tensor([int(row[column]) for row in rows], dtype=torch.int64)

    def loss(self, leaf: torch.nn.Module, outputs: Any, batch: Any) -> torch.Tensor:
        smoothing = (
            outputs.root_outputs[self.root].noise_level
            if self.smooth_by_noise_level
            else self.label_smoothing
        )
        return leaf.loss(outputs.leaf_outputs[self.leaf], batch.labels[self.name], label_smoothing=smoothing)

    def metrics(self, outputs: Any, batch: Any) -> dict[str, float]:
        return classification_metrics(outputs.leaf_outputs[self.leaf].logits, batch.labels[self.name])


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits (E, B, K), labels (B,) with -100 = missing. Metrics of the ensemble-mean class probabilities over
    labelled rows: accuracy, nll, auroc (binary for K = 2, one-vs-rest macro otherwise; NaN with one class)."""
    probs = logits.detach().float().cpu().softmax(-1).mean(0)  # (B, K)
    labels = labels.detach().cpu()
    keep = labels != IGNORE_INDEX
    if not keep.any():
        raise ValueError("classification_metrics: every label is -100; expected at least one labelled row")
    probs, labels = probs[keep], labels[keep]
    num_classes = probs.shape[-1]
    if labels.unique().numel() < 2:
        auroc = float("nan")
    elif num_classes == 2:
        auroc = binary_auroc(probs[:, 1], labels).item()
    else:
        auroc = multiclass_auroc(probs, labels, num_classes=num_classes).item()
    return {
        "accuracy": (probs.argmax(-1) == labels).double().mean().item(),
        "nll": -probs.gather(-1, labels[:, None]).clamp_min(1e-12).log().mean().item(),
        "auroc": auroc,
    }
