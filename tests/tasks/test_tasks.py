"""Task label cleaning and metrics: NaN / -100 labels are left out, bad labels name row and column."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from cortex.tasks import ClassificationTask, RegressionTask, classification_metrics, regression_metrics


def test_regression_metrics_leave_out_missing_labels():
    loc = torch.tensor([[[1.0, 5.0], [2.0, 0.0], [4.0, 1.0]]])  # (E=1, B=3, T=2)
    scale = torch.ones_like(loc)
    labels = torch.tensor([[1.5, float("nan")], [2.0, 1.0], [3.0, 2.0]])
    metrics = regression_metrics(loc, scale, labels)
    diff = torch.tensor([0.5, 0.0, -1.0, 1.0, 1.0], dtype=torch.float64)  # labelled entries only
    assert math.isclose(metrics["rmse"], diff.pow(2).mean().sqrt().item(), rel_tol=1e-9)
    assert math.isclose(metrics["mae"], diff.abs().mean().item(), rel_tol=1e-9)
    expected_nll = 0.5 * math.log(2 * math.pi) + 0.5 * diff.pow(2).mean().item()
    assert math.isclose(metrics["nll"], expected_nll, rel_tol=1e-9)
    rho_0 = spearmanr([1.5, 2.0, 3.0], [1.0, 2.0, 4.0]).statistic
    rho_1 = spearmanr([1.0, 2.0], [0.0, 1.0]).statistic
    assert math.isclose(metrics["spearman_rho"], (rho_0 + rho_1) / 2)
    with pytest.raises(ValueError, match="every label is NaN"):
        regression_metrics(loc, scale, torch.full_like(labels, float("nan")))


def test_classification_labels_and_metrics():
    task = ClassificationTask("c", "leaf", {"p": "seq"}, label="y", num_classes=2, classes=["dark", "bright"])
    frame = task.prepare(pd.DataFrame({"seq": ["A", "C", "D"], "y": ["bright", None, "dark"]}), split="train")
    assert frame.y.tolist() == [1, 0]  # the unlabelled row is left out
    assert task.collate_labels(frame.to_dict("records")).tolist() == [1, 0]
    with pytest.raises(
        ValueError, match=r"label column 'y' row 1 is 'grey'; expected one of \['dark', 'bright'\]"
    ):
        task.prepare(pd.DataFrame({"seq": ["A", "C"], "y": ["dark", "grey"]}), split="train")
    ints = ClassificationTask("c", "leaf", {"p": "seq"}, label="y", num_classes=3)
    with pytest.raises(ValueError, match=r"row 0 is 3.5; expected an integer class id in \[0, 3\)"):
        ints.prepare(pd.DataFrame({"seq": ["A"], "y": [3.5]}), split="train")
    logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]]])  # (E=1, B=3, K=2)
    metrics = classification_metrics(logits, torch.tensor([0, 1, -100]))
    assert metrics["accuracy"] == 1.0 and metrics["auroc"] == 1.0
    assert math.isclose(
        metrics["nll"], -math.log(torch.tensor([2.0, 0.0]).softmax(0)[0].item()), rel_tol=1e-6
    )


def test_regression_rows_without_any_label_are_left_out():
    task = RegressionTask("r", "leaf", {"p": "seq"}, ["a", "b"])
    frame = pd.DataFrame({"seq": ["A", "C", "D"], "a": [1.0, np.nan, np.nan], "b": ["2", np.nan, "3"]})
    cleaned = task.prepare(frame, split="train")
    assert cleaned.seq.tolist() == ["A", "D"]
    labels = task.collate_labels(cleaned.to_dict("records"))
    assert labels.dtype == torch.float32 and torch.isnan(labels[1, 0]) and labels[1, 1] == 3.0


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="targets='y'; expected a non-empty list"):
        RegressionTask("r", "leaf", {"p": "seq"}, "y")
    with pytest.raises(ValueError, match="label_smoothing='corrupt_frac'"):
        RegressionTask("r", "leaf", {"p": "seq"}, ["y"], label_smoothing="corrupt_frac")
    with pytest.raises(ValueError, match="root 'p' is fed \\['a', 'b'\\]; expected one column name"):
        RegressionTask("r", "leaf", {"p": ["a", "b"]}, ["y"])
