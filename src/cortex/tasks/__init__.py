"""cortex.tasks: what a leaf is trained to do (which columns feed which roots, labels, loss, metrics)."""

from cortex.tasks.classification import ClassificationTask, classification_metrics
from cortex.tasks.language_model import CausalLMTask, MLMTask
from cortex.tasks.regression import RegressionTask, regression_metrics
from cortex.tasks.task import Task

__all__ = [
    "CausalLMTask",
    "ClassificationTask",
    "MLMTask",
    "RegressionTask",
    "Task",
    "classification_metrics",
    "regression_metrics",
]
