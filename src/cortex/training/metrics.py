"""Validation metrics per task, as torchmetrics (states are gathered across ranks before `compute`).

One metric class per leaf type (`METRICS`, keyed by the leaf's config "type"):
regression: Spearman, Pearson, RMSE, Gaussian NLL and 90% interval coverage of the ensemble's predictive
Gaussian (mean of member means, variance = mean member variance + variance of member means);
classification: accuracy, AUROC and NLL of the ensemble-mean class probabilities;
language models: NLL per target token, perplexity = exp(NLL), top-1 accuracy.
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

# Two-sided 90% interval of a Gaussian: loc +- z * scale.
_Z90 = 1.6448536269514722


class RegressionMetrics(Metric):
    """update(loc (E, B, T), scale (E, B, T), labels (B, T) with NaN = missing), all in original units.
    compute() -> {spearman, pearson, rmse, nll, coverage_90}; correlations are means over targets."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("mean", default=[], dist_reduce_fx="cat")
        self.add_state("var", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, loc: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor) -> None:
        loc, scale = loc.detach().double(), scale.detach().double()
        self.mean.append(loc.mean(0))  # (B, T)
        self.var.append(scale.pow(2).mean(0) + loc.var(0, unbiased=False))  # (B, T)
        self.labels.append(labels.detach().double())

    def compute(self) -> dict[str, torch.Tensor]:
        mean, var, labels = (_cat(x) for x in (self.mean, self.var, self.labels))
        labelled = ~torch.isnan(labels)
        spearman, pearson = [], []
        for t in range(labels.shape[-1]):
            rows = labelled[:, t]
            if rows.sum() >= 2:
                spearman.append(spearman_corrcoef(mean[rows, t], labels[rows, t]))
                pearson.append(pearson_corrcoef(mean[rows, t], labels[rows, t]))
        y, mu, v = labels[labelled], mean[labelled], var[labelled]
        nll = 0.5 * (torch.log(2 * math.pi * v) + (y - mu).pow(2) / v)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=mean.device)
        return {
            "spearman": torch.stack(spearman).mean() if spearman else nan,
            "pearson": torch.stack(pearson).mean() if pearson else nan,
            "rmse": (y - mu).pow(2).mean().sqrt(),
            "nll": nll.mean(),
            "coverage_90": ((y - mu).abs() <= _Z90 * v.sqrt()).double().mean(),
        }


class ClassificationMetrics(Metric):
    """update(logits (E, B, K), labels (B,) with -100 = missing) -> {accuracy, auroc, nll}."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.probs.append(logits.detach().float().softmax(-1).mean(0))  # (B, K)
        self.labels.append(labels.detach().long())

    def compute(self) -> dict[str, torch.Tensor]:
        probs, labels = _cat(self.probs), _cat(self.labels)
        keep = labels != -100
        probs, labels = probs[keep], labels[keep]
        num_classes = probs.shape[-1]
        auroc = (
            binary_auroc(probs[:, 1], labels)
            if num_classes == 2
            else multiclass_auroc(probs, labels, num_classes=num_classes, average="macro")
        )
        return {
            "accuracy": (probs.argmax(-1) == labels).double().mean(),
            "auroc": auroc,
            "nll": -probs.gather(-1, labels[:, None]).clamp_min(1e-12).log().mean(),
        }


class LanguageModelMetrics(Metric):
    """update(logits (E, B, L, V), targets (B, L), keep (B, L) bool) -> {nll, perplexity, top_1_accuracy} of
    the ensemble-mean token distribution over the kept positions (mean over tokens, not sequences)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> None:
        probs = logits.detach().float().softmax(-1).mean(0)  # (B, L, V)
        target_probs = probs.gather(-1, targets[..., None]).squeeze(-1)  # (B, L)
        keep = keep.bool()
        self.nll_sum += -(target_probs.clamp_min(1e-12).log().double() * keep).sum()
        self.correct += ((probs.argmax(-1) == targets) & keep).double().sum()
        self.count += keep.double().sum()

    def compute(self) -> dict[str, torch.Tensor]:
        nll = self.nll_sum / self.count
        return {"nll": nll, "perplexity": nll.exp(), "top_1_accuracy": self.correct / self.count}


def _cat(values: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    # After a distributed sync torchmetrics leaves one concatenated tensor instead of a list.
    return torch.cat(values) if isinstance(values, list) else values


METRICS: dict[str, type[Metric]] = {
    "regressor": RegressionMetrics,
    "classifier": ClassificationMetrics,
    "mlm": LanguageModelMetrics,
    "causal_lm": LanguageModelMetrics,
}
