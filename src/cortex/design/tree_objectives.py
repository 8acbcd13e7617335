"""Objectives computed by the tree: which leaf, which output, and how the ensemble is reduced.

Each objective is a `TreeObjective`: `leaves` names what it reads, `forward(leaf_outputs) -> (B,)` scores to
maximise (differentiable, so guidance can follow its gradient), `fit(leaf_outputs)` sets its data-dependent
constants from the seeds' predictions.
"""

from __future__ import annotations

import torch

from cortex.design.lambo import TreeObjective


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


__all__ = ["LeafMean"]
