"""Language-model tasks: the targets are the root's own tokens, so a batch carries no labels for them.

MLM: predict the clean tokens at the positions the root's corruption process changed (`clean_ids`,
`is_corrupted` of the root output). Causal LM: predict token l + 1 from positions <= l.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from cortex.tasks.task import Task


def _token_metrics(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor) -> dict[str, float]:
    """logits (E, B, L, V), targets (B, L), keep (B, L) bool -> nll and top-1 accuracy of the ensemble-mean
    distribution over the kept positions (NaN when none is kept)."""
    probs = logits.detach().float().softmax(-1).mean(0)[keep]  # (N, V)
    targets = targets[keep]
    if targets.numel() == 0:
        return {"nll": float("nan"), "top_1_accuracy": float("nan")}
    return {
        "nll": -probs.gather(-1, targets[:, None]).clamp_min(1e-12).log().mean().item(),
        "top_1_accuracy": (probs.argmax(-1) == targets).double().mean().item(),
    }


class MLMTask(Task):
    """Masked language modelling for an `mlm` leaf on `root` (the task's single input root)."""

    def __init__(self, name: str, leaf: str, inputs: Mapping[str, str], data: Any = None) -> None:
        super().__init__(name, leaf, inputs, data)
        if len(self.inputs) != 1:
            raise ValueError(f"task {name!r}: an MLM task reads one root; got inputs {self.inputs}")

    def loss(self, leaf: torch.nn.Module, outputs: Any, batch: Any) -> torch.Tensor:
        root_output = outputs.root_outputs[self.root]
        return leaf.loss(outputs.leaf_outputs[self.leaf], root_output.clean_ids, root_output.is_corrupted)

    def metrics(self, outputs: Any, batch: Any) -> dict[str, float]:
        root_output = outputs.root_outputs[self.root]
        return _token_metrics(
            outputs.leaf_outputs[self.leaf].logits, root_output.clean_ids, root_output.is_corrupted.bool()
        )


class CausalLMTask(Task):
    """Next-token prediction for a `causal_lm` leaf; pad positions are never targets."""

    def __init__(self, name: str, leaf: str, inputs: Mapping[str, str], data: Any = None) -> None:
        super().__init__(name, leaf, inputs, data)
        if len(self.inputs) != 1:
            raise ValueError(f"task {name!r}: a causal LM task reads one root; got inputs {self.inputs}")

    def loss(self, leaf: torch.nn.Module, outputs: Any, batch: Any) -> torch.Tensor:
        inputs = batch.root_inputs[self.root]
        return leaf.loss(outputs.leaf_outputs[self.leaf], inputs["input_ids"], inputs["attention_mask"])

    def metrics(self, outputs: Any, batch: Any) -> dict[str, float]:
        inputs = batch.root_inputs[self.root]
        logits = outputs.leaf_outputs[self.leaf].logits[:, :, :-1]  # position l predicts token l + 1
        keep = inputs["attention_mask"][:, 1:].bool()
        return _token_metrics(logits, inputs["input_ids"][:, 1:], keep)
