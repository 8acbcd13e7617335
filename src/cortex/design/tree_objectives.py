"""Objectives computed by the tree: which leaf, which output, and how the ensemble is reduced.

Each objective is a `TreeObjective`: `leaves` names what it reads, `forward(leaf_outputs) -> (B,)` scores to
maximise (differentiable, so guidance can follow its gradient), `fit(leaf_outputs)` sets its data-dependent
constants from the seeds' predictions.
"""

from __future__ import annotations

import torch

from cortex.design.lambo import TreeObjective
from cortex.design.objectives import EnsembleAcquisition


class LeafMean(TreeObjective):
    """Ensemble-mean of one output column of a leaf: regressor `loc` (E, B, T) -> (B,) at column `target`, or a
    classifier's probability of class `target` (E, B, K) -> (B,). `sign` -1 minimises instead."""

    def __init__(self, leaf: str, output: str = "loc", target: int = 0, sign: float = 1.0):
        super().__init__()
        if output not in ("loc", "probs"):
            raise ValueError(
                f"LeafMean output is {output!r}; expected 'loc' (regressor) or 'probs' (classifier)"
            )
        if sign not in (1.0, -1.0):
            raise ValueError(f"LeafMean sign is {sign!r}; expected 1.0 or -1.0")
        self.leaves = (leaf,)
        self.leaf, self.output, self.target, self.sign = leaf, output, target, sign

    def values(self, leaf_outputs: dict) -> torch.Tensor:
        """(E, B) per-member values."""
        out = leaf_outputs[self.leaf]
        if self.output == "loc":
            return out.loc[..., self.target]
        return torch.softmax(out.logits, dim=-1)[..., self.target]

    def forward(self, leaf_outputs: dict) -> torch.Tensor:
        return self.sign * self.values(leaf_outputs).mean(0)


class AcquisitionObjective(TreeObjective):
    """The LaMBO-2 acquisition over tree predictions (spec 7.3): noisy log EI for one objective, log EHVI with
    a reference point inferred from the seeds for several; classifier constraint leaves multiply their
    feasibility probability in. Math in `cortex.design.objectives.EnsembleAcquisition`; this binds it to leaves.

    objectives: regressor leaves, each `leaf` or `(leaf, target column)`. constraints: classifier leaves whose
    class `feasible_class` means feasible. fit_scaling: map each objective's seed range to [0, 1] first.
    All leaves must have the same ensemble size E. `fit` (on the seeds' predictions) must run before scoring.
    """

    def __init__(
        self,
        objectives: list[str | tuple[str, int]],
        constraints: list[str] = (),
        feasible_class: int = 1,
        fit_scaling: bool = False,
    ):
        super().__init__()
        if not objectives:
            raise ValueError("AcquisitionObjective needs at least one objective leaf; got []")
        self.targets = [(o, 0) if isinstance(o, str) else (o[0], int(o[1])) for o in objectives]
        self.constraint_leaves = list(constraints)
        self.feasible_class = feasible_class
        self.fit_scaling = fit_scaling
        self.leaves = tuple(dict.fromkeys([leaf for leaf, _ in self.targets] + self.constraint_leaves))
        self.acquisition: EnsembleAcquisition | None = None

    def values(self, leaf_outputs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(E, B, M) objective values and (E, B, 1) constraint probabilities (None without constraints)."""
        values = torch.stack([leaf_outputs[leaf].loc[..., t] for leaf, t in self.targets], dim=-1)
        probs = None
        for leaf in self.constraint_leaves:
            p = torch.softmax(leaf_outputs[leaf].logits, dim=-1)[
                ..., self.feasible_class : self.feasible_class + 1
            ]
            if p.shape[0] != values.shape[0]:
                raise ValueError(
                    f"constraint leaf {leaf!r} has {p.shape[0]} ensemble members, the objectives "
                    f"{values.shape[0]}; expected equal ensemble sizes"
                )
            probs = p if probs is None else probs * p
        return values, probs

    def fit(self, leaf_outputs: dict) -> None:
        values, probs = self.values(leaf_outputs)
        self.acquisition = EnsembleAcquisition(values.detach(), probs, fit_scaling=self.fit_scaling)

    def forward(self, leaf_outputs: dict) -> torch.Tensor:
        if self.acquisition is None:
            raise ValueError("AcquisitionObjective is not fitted; call fit(leaf_outputs of the seeds) first")
        values, probs = self.values(leaf_outputs)
        return self.acquisition(values, probs)


__all__ = ["AcquisitionObjective", "LeafMean"]
