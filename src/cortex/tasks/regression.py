"""Regression: one or more real-valued targets per row, NaN where a target was not measured.

Missing labels are left out of the loss (the leaf's loss skips NaN) and of every metric, never imputed.
Target standardisation is fitted on the training split only and stored in the leaf's buffers (spec 3.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from cortex.tasks.task import Task


class RegressionTask(Task):
    """Real-valued targets for a `regressor` leaf.

    Args:
        targets: label columns; the leaf's `out_dim` T equals len(targets).
        label_smoothing: a float, or "noise_level" to smooth each row by its root's noise level (the
            original's corrupt_train_inputs, spec A10/A11).
        (name, leaf, inputs, data: see `Task`.)
    """

    def __init__(
        self,
        name: str,
        leaf: str,
        inputs: Mapping[str, str],
        targets: Sequence[str],
        label_smoothing: float | str = 0.0,
        data: Any = None,
    ) -> None:
        super().__init__(name, leaf, inputs, data)
        if isinstance(targets, str) or len(targets) == 0:
            raise ValueError(f"task {name!r}: targets={targets!r}; expected a non-empty list of column names")
        if isinstance(label_smoothing, str) and label_smoothing != "noise_level":
            raise ValueError(
                f"task {name!r}: label_smoothing={label_smoothing!r}; expected a float or 'noise_level'"
            )
        self.label_columns = tuple(targets)
        self.label_smoothing = label_smoothing
        self.smooth_by_noise_level = label_smoothing == "noise_level"

    def clean_labels(self, frame: pd.DataFrame, *, where: str) -> pd.DataFrame:
        frame = frame.copy()
        for column in self.label_columns:
            raw = frame[column]
            numeric = pd.to_numeric(raw, errors="coerce").astype(np.float64)
            bad = (raw.notna() & numeric.isna()).to_numpy()
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{where}: target column {column!r} row {row} is {raw.iloc[row]!r}; expected a number "
                    "(or an empty cell / NaN for a missing label)"
                )
            # Labels are collated as float32: beyond its range a finite label would silently become inf.
            infinite = np.abs(numeric.to_numpy()) > np.finfo(np.float32).max
            if infinite.any():
                row = int(np.flatnonzero(infinite)[0])
                raise ValueError(
                    f"{where}: target column {column!r} row {row} is {numeric.iloc[row]}; expected a finite "
                    "number (NaN marks a missing label)"
                )
            frame[column] = numeric
        return frame

    def is_labelled(self, frame: pd.DataFrame) -> pd.Series:
        return frame[list(self.label_columns)].notna().any(axis=1)

    def collate_labels(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """(B, T) float32, NaN = missing."""
        values = [[row[column] for column in self.label_columns] for row in rows]
        return torch.tensor(np.asarray(values, dtype=np.float32))

    def fit(self, leaf: torch.nn.Module, train: pd.DataFrame) -> None:
        """Standardisation fitted on the training split only, written into the leaf's buffers."""
        if len(train) == 0:
            raise ValueError(
                f"task {self.name!r}: cannot fit target standardisation on an empty training split"
            )
        leaf.fit_target_standardization(
            torch.tensor(train[list(self.label_columns)].to_numpy(dtype=np.float32))
        )

    def _label_smoothing(self, outputs: Any) -> float | torch.Tensor:
        if self.smooth_by_noise_level:
            return outputs.root_outputs[self.root].noise_level
        return self.label_smoothing

    def loss(self, leaf: torch.nn.Module, outputs: Any, batch: Any) -> torch.Tensor:
        return leaf.loss(
            outputs.leaf_outputs[self.leaf],
            batch.labels[self.name],
            label_smoothing=self._label_smoothing(outputs),
        )

    def metrics(self, outputs: Any, batch: Any) -> dict[str, float]:
        output = outputs.leaf_outputs[self.leaf]
        return regression_metrics(output.loc, output.scale, batch.labels[self.name])


def regression_metrics(loc: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Spec 3.6 metrics over labelled entries only. loc, scale: (E, B, T) in original units; labels (B, T)
    with NaN = missing. Returns rmse, nrmse, mae, nll (mean per-member Gaussian NLL), spearman_rho (mean over
    targets with >= 2 labels), avg_pred_std, avg_pred_mean."""
    loc, scale, labels = (
        loc.detach().double().cpu(),
        scale.detach().double().cpu(),
        labels.detach().double().cpu(),
    )
    is_labelled = ~torch.isnan(labels)  # (B, T)
    if not is_labelled.any():
        raise ValueError("regression_metrics: every label is NaN; expected at least one labelled entry")
    y = torch.where(is_labelled, labels, torch.zeros_like(labels))
    mean_loc = loc.mean(0)  # (B, T)
    diff = (y - mean_loc)[is_labelled]
    # Normaliser per row over its labelled targets (the original's ‖|y| + |ŷ|‖ along the last axis).
    norm = torch.linalg.vector_norm(
        torch.where(is_labelled, y.abs() + mean_loc.abs(), 0.0), dim=-1, keepdim=True
    )
    scaled = ((y - mean_loc) / norm.clamp_min(1e-6))[is_labelled]
    member_nll = -torch.distributions.Normal(loc, scale).log_prob(y.expand_as(loc))  # (E, B, T)
    rhos = []
    for t in range(labels.shape[-1]):
        rows = is_labelled[:, t]
        if rows.sum() >= 2:
            rhos.append(spearmanr(y[rows, t].numpy(), mean_loc[rows, t].numpy()).statistic)
    return {
        "rmse": diff.pow(2).mean().sqrt().item(),
        "nrmse": scaled.pow(2).mean().sqrt().item(),
        "mae": diff.abs().mean().item(),
        "nll": member_nll[:, is_labelled].mean().item(),
        "spearman_rho": float(np.mean(rhos)) if rhos else float("nan"),
        "avg_pred_std": scale[:, is_labelled].mean().item(),
        "avg_pred_mean": loc[:, is_labelled].mean().item(),
    }
