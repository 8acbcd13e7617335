"""LaMBO-2 on a model compiled in place (`model.compile()`, inductor on CPU) gives the eager populations."""

from __future__ import annotations

import copy

import pytest
import torch

from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.tree_objectives import LeafMean


@pytest.mark.slow
def test_compiled_model_gives_the_eager_populations(tiny_model, rbd_seeds):
    settings = {"num_mutations_per_step": 3, "max_guidance_updates": 2, "kl_weight": 0.25, "seed": 7,
                "resample_edit_positions": True, "guidance_step_size": 2.0}  # fmt: skip
    eager = LaMBO2(tiny_model, LeafMean("bind"), config=LaMBO2Config(**settings)).run(rbd_seeds, 3)
    compiled_model = copy.deepcopy(tiny_model)
    compiled_model.compile()
    torch._dynamo.reset()
    try:
        compiled = LaMBO2(compiled_model, LeafMean("bind"), config=LaMBO2Config(**settings)).run(rbd_seeds, 3)
    finally:
        torch._dynamo.reset()
    assert compiled_model._compiled_call_impl is not None  # the model really ran compiled
    assert torch.equal(compiled.input_ids, eager.input_ids)
    assert [row["sequence"] for row in compiled.history] == [row["sequence"] for row in eager.history]
    assert [row["accepted"] for row in compiled.history] == [row["accepted"] for row in eager.history]
    torch.testing.assert_close(compiled.objective, eager.objective, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.pll, eager.pll, atol=1e-4, rtol=1e-4)
    assert sum(row["accepted"] for row in eager.history) > 0
