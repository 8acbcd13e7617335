"""Leaves: the prediction heads, each owning its loss math (shared by the Lightning and HF Trainer paths).

Every leaf sits on one branch and has one head per ensemble member; outputs carry the ensemble dim first.
The closed-form losses are pure functions (`natural_gaussian_params`, `gaussian_natural_loss`,
`smoothed_cross_entropy`) so they can be checked against the original cortex (spec sections 3.2, 3.3, 3.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from cortex.model.branches import BranchOutput
from cortex.model.configuration_neural_tree import (
    CausalLMLeafConfig,
    ClassifierLeafConfig,
    MLMLeafConfig,
    RegressorLeafConfig,
)
from cortex.model.roots import RootOutput

IGNORE_INDEX = -100
LOG_BASE_MEASURE = -0.5 * math.log(2 * math.pi)  # log h(y), h = 1 / sqrt(2 pi)


@dataclass
class RegressorOutput(ModelOutput):
    """loc, scale (E, B, T) in original target units; eta1, eta2 (E, B, T) natural parameters (standardised)."""

    loc: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    eta1: torch.Tensor | None = None
    eta2: torch.Tensor | None = None


@dataclass
class ClassifierOutput(ModelOutput):
    """logits (E, B, K)."""

    logits: torch.Tensor | None = None


@dataclass
class LanguageModelOutput(ModelOutput):
    """logits (E, B, L, V) over the vocabulary of the leaf's root."""

    logits: torch.Tensor | None = None


def natural_gaussian_params(
    head: torch.Tensor, var_lb: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Natural-parameter Gaussian head (spec 3.2). head (..., 2T) = (a, b) -> eta1, eta2, mean, var, each (..., T).

    eta1 = a; eta2 = -softplus(b, beta=0.5) (= b exactly for b > 40); var = max(-1 / (2 eta2), var_lb);
    mean = eta1 * var (with the clamped var).
    """
    eta1, raw = head.chunk(2, dim=-1)
    eta2 = -F.softplus(raw, beta=0.5)
    var = (-0.5 / eta2).clamp_min(var_lb)
    return eta1, eta2, eta1 * var, var


def _log_partition(eta1: torch.Tensor, eta2: torch.Tensor) -> torch.Tensor:
    """A(eta) = -eta1^2 / (4 eta2) - log(-2 eta2) / 2."""
    return -eta1.pow(2) / (4 * eta2) - 0.5 * torch.log(-2 * eta2)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return values.mean()
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def gaussian_natural_loss(
    eta1: torch.Tensor,
    eta2: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | torch.Tensor = 0.0,
    nominal_label_var: float = 0.0625,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Natural-parameter Gaussian NLL, or with label smoothing alpha the KL from the moment-averaged label
    distribution N((1 - a) y, a + (1 - a) s0^2 + a (1 - a) y^2) to the model (spec 3.3).

    eta1, eta2, targets: same shape (standardised units); alpha: float or tensor broadcastable to targets.
    As the original: a float alpha <= 0 gives the NLL; a tensor alpha gives the KL for every element when any
    entry is > 0 (rows with alpha = 0 then use the KL to N(y, s0^2), spec A11), else the NLL. The choice for a
    tensor is a torch.where on both losses (no host sync). valid: bool mask of elements in the mean.
    Returns a 0-d tensor (float64 when alpha is float64).
    """
    nll = -(LOG_BASE_MEASURE + eta1 * targets + eta2 * targets.pow(2) - _log_partition(eta1, eta2))
    nll = _masked_mean(nll, valid)
    if not isinstance(alpha, torch.Tensor):
        if alpha <= 0:
            return nll
        alpha = torch.full_like(targets, alpha)
    m = (1 - alpha) * targets
    v = alpha + (1 - alpha) * nominal_label_var + alpha * (1 - alpha) * targets.pow(2)
    p_eta1 = m / v
    p_eta2 = -1 / (2 * v)
    p_var = -0.5 / p_eta2
    p_mean = p_eta1 * p_var.clamp_min(1e-4)
    kl = (
        (p_eta1 - eta1) * p_mean
        + (p_eta2 - eta2) * (p_var + p_mean.pow(2))
        - _log_partition(p_eta1, p_eta2)
        + _log_partition(eta1, eta2)
    )
    kl = _masked_mean(kl, valid)
    return torch.where((alpha > 0).any(), kl, nll)


def smoothed_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Cross-entropy against (1 - a) onehot + a / K (spec 3.5), averaged over targets != -100.

    logits (N, K); targets (N,) class ids with -100 = missing; alpha float or (N,) tensor (its dtype sets the
    loss dtype, as the original). Returns a 0-d tensor (0 when no target is present).
    """
    num_classes = logits.shape[-1]
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.full(targets.shape, alpha, dtype=torch.float32, device=logits.device)
    alpha = alpha.reshape(-1, 1)
    valid = targets != IGNORE_INDEX
    one_hot = F.one_hot(torch.where(valid, targets, 0), num_classes)
    target_probs = (1 - alpha) * one_hot + alpha / num_classes
    per_example = -(target_probs * logits.log_softmax(dim=-1)).sum(-1)
    return _masked_mean(per_example, valid)


def _head(
    in_dim: int, out_dim: int, num_layers: int, layernorm: bool = False, bias: bool = True
) -> nn.Sequential:
    """[LayerNorm(in, bias=False)] + num_layers x [Linear(in, in), ReLU] + Linear(in, out)."""
    layers: list[nn.Module] = [nn.LayerNorm(in_dim, bias=False)] if layernorm else []
    for _ in range(num_layers):
        layers += [nn.Linear(in_dim, in_dim), nn.ReLU()]
    layers.append(nn.Linear(in_dim, out_dim, bias=bias))
    return nn.Sequential(*layers)


class Leaf(nn.Module):
    """Base of every leaf: `branch` (name of the branch feeding it) and one head per ensemble member."""

    branch: str

    def receptive_radius(self) -> int | None:
        """0 when the output at position i reads the branch's features at i alone; None (the default) when the
        leaf reads pooled features."""
        return None

    def tree_loss(
        self, output: ModelOutput, root_outputs: dict[str, RootOutput], labels: torch.Tensor | None
    ) -> torch.Tensor:
        """The leaf's loss inside a tree forward (labels as in the leaf's `loss`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement tree_loss")


class RegressorLeaf(Leaf):
    """Natural-parameter Gaussian regressor on pooled features (spec 3.1-3.3).

    Buffers `target_mean`, `target_std` (T,) hold the target standardisation, so a saved model predicts in
    original units: loc = mean + std * mu, scale = std * sqrt(var).
    """

    def __init__(self, config: RegressorLeafConfig, in_dim: int, ensemble_size: int):
        super().__init__()
        self.branch = config.branch
        self.var_lb = config.var_lb
        self.nominal_label_var = config.nominal_label_var
        self.members = nn.ModuleList(
            nn.Sequential(*_head(in_dim, 2 * config.out_dim, config.num_layers)) for _ in range(ensemble_size)
        )
        self.register_buffer("target_mean", torch.zeros(config.out_dim))
        self.register_buffer("target_std", torch.ones(config.out_dim))

    @torch.no_grad()
    def fit_target_standardization(self, targets: torch.Tensor, min_std: float = 1e-8) -> None:
        """Sets the buffers from training targets (N, T): per-column mean and unbiased std over non-NaN values;
        a std below min_std (or undefined) becomes 1."""
        if targets.dim() != 2 or targets.shape[1] != self.target_mean.shape[0]:
            raise ValueError(
                f"targets have shape {tuple(targets.shape)}; expected (N, {self.target_mean.shape[0]})"
            )
        valid = ~targets.isnan()
        count = valid.sum(0)
        mean = torch.where(valid, targets, 0).sum(0) / count.clamp_min(1)
        sq = torch.where(valid, targets - mean, 0).pow(2).sum(0)
        std = (sq / (count - 1).clamp_min(1)).sqrt()
        std = torch.where((std < min_std) | (count < 2), torch.ones_like(std), std)
        self.target_mean.copy_(mean)
        self.target_std.copy_(std)

    def transform(self, head: torch.Tensor) -> RegressorOutput:
        """head (E, B, 2T) raw outputs -> RegressorOutput (loc/scale in original units)."""
        eta1, eta2, mean, var = natural_gaussian_params(head, self.var_lb)
        loc = self.target_mean + self.target_std * mean
        scale = self.target_std * var.sqrt()
        return RegressorOutput(loc=loc, scale=scale, eta1=eta1, eta2=eta2)

    def forward(self, branch_output: BranchOutput) -> RegressorOutput:
        pooled = branch_output.pooled  # (E, B, D)
        return self.transform(torch.stack([member(x) for member, x in zip(self.members, pooled)]))

    def loss(
        self, output: RegressorOutput, labels: torch.Tensor, label_smoothing: float | torch.Tensor = 0.0
    ) -> torch.Tensor:
        """labels (B, T) in original units, NaN = missing (left out of the mean); label_smoothing: float or (B,).
        Mean over members, examples and targets of the natural NLL or the smoothed KL (see gaussian_natural_loss)."""
        if labels.shape != output.eta1.shape[1:]:
            raise ValueError(
                f"regressor labels have shape {tuple(labels.shape)}; expected {tuple(output.eta1.shape[1:])}"
            )
        labels = labels.to(output.eta1.dtype)
        valid = ~labels.isnan()
        standardised = (torch.where(valid, labels, self.target_mean) - self.target_mean) / self.target_std
        if isinstance(label_smoothing, torch.Tensor):
            label_smoothing = label_smoothing.reshape(1, -1, 1)  # (1, B, 1) over (E, B, T)
        targets = standardised.expand_as(output.eta1)
        return gaussian_natural_loss(
            output.eta1,
            output.eta2,
            targets,
            label_smoothing,
            self.nominal_label_var,
            valid.expand_as(output.eta1),
        )

    def tree_loss(self, output, root_outputs, labels):
        return self.loss(output, labels)


class ClassifierLeaf(Leaf):
    """Classifier on pooled features (spec 2.7); logits (E, B, K)."""

    def __init__(self, config: ClassifierLeafConfig, in_dim: int, ensemble_size: int):
        super().__init__()
        self.branch = config.branch
        self.members = nn.ModuleList(
            _head(in_dim, config.num_classes, config.num_layers, config.layernorm, config.last_layer_bias)
            for _ in range(ensemble_size)
        )

    def forward(self, branch_output: BranchOutput) -> ClassifierOutput:
        return ClassifierOutput(
            logits=torch.stack([m(x) for m, x in zip(self.members, branch_output.pooled)])
        )

    def loss(
        self, output: ClassifierOutput, labels: torch.Tensor, label_smoothing: float | torch.Tensor = 0.0
    ) -> torch.Tensor:
        """labels (B,) class ids, -100 = missing; label_smoothing float or (B,). Mean over members and examples."""
        ensemble, batch, num_classes = output.logits.shape
        if labels.shape != (batch,):
            raise ValueError(f"classifier labels have shape {tuple(labels.shape)}; expected ({batch},)")
        if isinstance(label_smoothing, torch.Tensor):
            label_smoothing = label_smoothing.reshape(1, batch).expand(ensemble, batch).reshape(-1)
        targets = labels.long().reshape(1, batch).expand(ensemble, batch).reshape(-1)
        return smoothed_cross_entropy(output.logits.reshape(-1, num_classes), targets, label_smoothing)

    def tree_loss(self, output, root_outputs, labels):
        return self.loss(output, labels)


class LanguageModelLeaf(Leaf):
    """Per-position logits (E, B, L, V) over the vocabulary of `root` from the branch's features."""

    def __init__(
        self, config: MLMLeafConfig | CausalLMLeafConfig, in_dim: int, ensemble_size: int, vocab_size: int
    ):
        super().__init__()
        self.branch = config.branch
        self.root = config.root
        self.members = nn.ModuleList(
            _head(in_dim, vocab_size, config.num_layers, config.layernorm) for _ in range(ensemble_size)
        )

    def receptive_radius(self) -> int:
        """0: the heads act per position."""
        return 0

    def forward(self, branch_output: BranchOutput) -> LanguageModelOutput:
        features = branch_output.last_hidden_state  # (E, B, L, D)
        return LanguageModelOutput(logits=torch.stack([m(x) for m, x in zip(self.members, features)]))


def _token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """logits (E, B, L, V), targets (B, L), weights (B, L) bool -> mean CE over weighted tokens and members
    (0 when no token is weighted: the guard for batches without a target, spec A29)."""
    ensemble = logits.shape[0]
    per_token = F.cross_entropy(
        logits.flatten(0, 2), targets.expand(ensemble, *targets.shape).reshape(-1), reduction="none"
    )
    return _masked_mean(per_token, weights.expand(ensemble, *weights.shape).reshape(-1))


class MLMLeaf(LanguageModelLeaf):
    """Masked-language-model leaf: loss on corrupted positions only."""

    def loss(
        self, output: LanguageModelOutput, clean_ids: torch.Tensor, is_corrupted: torch.Tensor
    ) -> torch.Tensor:
        """clean_ids (B, L), is_corrupted (B, L) bool -> mean CE at corrupted positions (0 if there are none)."""
        return _token_cross_entropy(output.logits, clean_ids, is_corrupted)

    def tree_loss(self, output, root_outputs, labels):
        root_output = root_outputs[self.root]
        clean_ids = root_output.clean_ids if labels is None else labels
        return self.loss(output, clean_ids, root_output.is_corrupted)


class CausalLMLeaf(LanguageModelLeaf):
    """Next-token leaf: position l predicts token l + 1; pads are never targets (fixes A13)."""

    def loss(
        self, output: LanguageModelOutput, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """input_ids, attention_mask (B, L) -> mean CE of logits[:, :, :-1] against input_ids[:, 1:] at real tokens."""
        return _token_cross_entropy(output.logits[:, :, :-1], input_ids[:, 1:], attention_mask[:, 1:].bool())

    def tree_loss(self, output, root_outputs, labels):
        root_output = root_outputs[self.root]
        input_ids = root_output.clean_ids if labels is None else labels
        return self.loss(output, input_ids, root_output.attention_mask)


LEAF_CLASSES: dict[type, type] = {
    RegressorLeafConfig: RegressorLeaf,
    ClassifierLeafConfig: ClassifierLeaf,
    MLMLeafConfig: MLMLeaf,
    CausalLMLeafConfig: CausalLMLeaf,
}
