"""Exact windowed and incremental pseudo-log-likelihood (cortex.design.pll): equal to full-length occlusions on
conv trees of several shapes and real RBD sequences; LaMBO-2 gives the same populations with and without them; a
transformer tree falls back to full-length occlusions."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.pll import pll_from_terms, pll_terms, rescore_positions
from cortex.design.tree_objectives import LeafMean
from cortex.model.configuration_neural_tree import NeuralTreeConfig
from cortex.model.modeling_neural_tree import NeuralTreeModel

LENGTH = 56
SHAPES = {
    "k3": ({"kernel_size": 3, "num_blocks": 1}, {"type": "conv1d", "kernel_size": 3, "num_blocks": 1}),
    "k4_dilated_3_blocks": (
        {"kernel_size": 4, "num_blocks": 3, "dilation": 2, "pos_encoding": False},
        {"type": "mlp"},
    ),
    "k2_ensemble_unmasked": (
        {"kernel_size": 2, "num_blocks": 2, "mask_block_input": False},
        {"type": "conv1d", "kernel_size": 2, "num_blocks": 1, "ensemble_size": 3},
    ),
    "k5_no_norm_identity_branch": (
        {"kernel_size": 5, "num_blocks": 2, "layernorm": False},
        {"type": "transformer", "num_blocks": 0, "ensemble_size": 2},
    ),
}


def conv_tree(root: dict, branch: dict, seed: int = 0) -> NeuralTreeModel:
    torch.manual_seed(seed)
    widths = {"embed_dim": 16, "channel_dim": 16, "out_dim": 16}
    branch = {"out_dim": 16, **({"channel_dim": 16} if branch["type"] != "mlp" else {}), **branch}
    config = NeuralTreeConfig(
        roots={"protein": {"type": "conv1d", "max_length": 64, **widths, **root}},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={
            "generation": branch,
            "property": {"type": "conv1d", "out_dim": 8, "channel_dim": 8, "num_blocks": 1},
        },
        leaves={
            "mlm": {"type": "mlm", "branch": "generation", "root": "protein"},
            "bind": {"type": "regressor", "branch": "property"},
        },
    )
    return NeuralTreeModel(config).eval()


def rbd_sequences(num: int) -> list[str]:
    """Real RBD variants (rows spread over the file) cut to LENGTH residues, the last one shorter."""
    frame = pd.read_csv("data/rbd_starr2020_bind_expr.csv.gz", usecols=["sequence"])
    frame = frame[~frame["sequence"].str.contains(r"\*")]
    sequences = frame["sequence"].iloc[:: len(frame) // num].str[:LENGTH].tolist()[:num]
    return [*sequences[:-1], sequences[-1][: LENGTH - 7]]


def terms(model, ids, mask, positions, radius, batch_tokens=97):
    """pll_terms on the tree's MLM leaf (an odd token budget, so batches split sequences)."""
    mask_id = model.get_tokenizer("protein").mask_token_id
    return pll_terms(model, "protein", "mlm", ids, mask, positions, mask_id, radius, batch_tokens)


@pytest.mark.parametrize("shape", SHAPES)
def test_windowed_terms_equal_full_length_terms(shape):
    model = conv_tree(*SHAPES[shape])
    radius = model.receptive_radius("protein", "mlm")
    assert 2 * radius + 1 < LENGTH, (
        "the window must be shorter than the sequence for the test to mean anything"
    )
    encoded = model.tokenize(rbd_sequences(3))
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    positions = mask.bool()
    windowed = terms(model, ids, mask, positions, radius)
    full = terms(model, ids, mask, positions, None)
    assert bool((full[positions] < 0).all()) and bool((full[~positions] == 0).all())
    torch.testing.assert_close(windowed, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_incremental_terms_equal_full_terms_of_the_proposal(shape):
    model = conv_tree(*SHAPES[shape], seed=1)
    radius = model.receptive_radius("protein", "mlm")
    encoded = model.tokenize(rbd_sequences(3))
    parent, mask = encoded["input_ids"], encoded["attention_mask"]
    included = mask.bool()
    proposal = parent.clone()
    for row, edits in enumerate(([0, 20, 23], [LENGTH - 1], [])):  # ends, a cluster, an unchanged row
        for position in edits:
            proposal[row, position] = (
                4 + (int(parent[row, position]) - 3) % 20
            )  # the next amino acid (ids 4-23)
    assert int((proposal != parent).sum()) == 4
    parent_terms = terms(model, parent, mask, included, radius)
    rescore = rescore_positions(proposal != parent, radius) & included
    updated = torch.where(rescore, terms(model, proposal, mask, rescore, radius), parent_terms)
    expected = terms(model, proposal, mask, included, None)
    torch.testing.assert_close(updated, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        pll_from_terms(updated, ~included), pll_from_terms(expected, ~included), atol=1e-6, rtol=1e-6
    )
    assert int(rescore.sum()) < int(included[:2].sum()), "only positions near the edits were rescored"


def test_rescore_positions_is_the_radius_neighbourhood():
    changed = torch.zeros(3, 20, dtype=torch.bool)
    changed[0, [0, 9]] = True
    changed[1, 19] = True
    distance = (torch.arange(20)[:, None] - torch.arange(20)[None, :]).abs()  # (L, L)
    for radius in (0, 1, 3, 25):
        expected = ((distance <= radius)[None] & changed[:, None, :]).any(-1)
        assert torch.equal(rescore_positions(changed, radius), expected)
    assert torch.equal(rescore_positions(changed, None), changed.any(-1, keepdim=True).expand(-1, 20))


def test_bad_arguments_are_named():
    model = conv_tree(*SHAPES["k3"])
    ids = model.tokenize(["ACDEFG"])["input_ids"]
    mask = torch.ones_like(ids)
    with pytest.raises(ValueError, match="positions has shape \\(1, 5\\)"):
        terms(model, ids, mask, torch.ones(1, 5, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="radius is -1"):
        terms(model, ids, mask, mask.bool(), -1)


def lambo(model, **overrides) -> LaMBO2:
    settings = {"num_mutations_per_step": 4, "max_guidance_updates": 2, "kl_weight": 0.25, "seed": 2,
                "resample_edit_positions": True, "guidance_step_size": 1.0, "pll_batch_size": 50}  # fmt: skip
    settings.update(overrides)
    return LaMBO2(model, LeafMean("bind"), config=LaMBO2Config(**settings))


@pytest.mark.parametrize("shape", ["k3", "k2_ensemble_unmasked"])
def test_lambo_populations_equal_with_and_without_the_fast_path(shape):
    model = conv_tree(*SHAPES[shape], seed=3)
    seeds = rbd_sequences(4)
    fast_sampler = lambo(model)
    assert fast_sampler.pll_radius == model.receptive_radius("protein", "mlm")
    fast = fast_sampler.run(seeds, 3)
    plain = lambo(model, pll_window=False).run(seeds, 3)
    assert torch.equal(fast.input_ids, plain.input_ids)
    for ours, theirs in zip(fast.history, plain.history, strict=True):
        assert ours["sequence"] == theirs["sequence"] and ours["accepted"] == theirs["accepted"]
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
    assert sum(row["accepted"] for row in fast.history) > 0, "nothing accepted: the test would prove nothing"
    torch.testing.assert_close(fast.pll, plain.pll, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.pll_terms, plain.pll_terms, atol=1e-5, rtol=1e-5)


def test_transformer_tree_falls_back_to_full_length_occlusions():
    torch.manual_seed(0)
    widths = {"embed_dim": 16, "channel_dim": 16, "out_dim": 16}
    config = NeuralTreeConfig(
        roots={"protein": {"type": "transformer", "max_length": 64, "num_blocks": 1, **widths}},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"generation": {"type": "conv1d", "out_dim": 16, "channel_dim": 16, "num_blocks": 1}},
        leaves={
            "mlm": {"type": "mlm", "branch": "generation", "root": "protein"},
            "bind": {"type": "regressor", "branch": "generation"},
        },
    )
    model = NeuralTreeModel(config).eval()
    sampler = lambo(model)
    assert sampler.pll_radius is None
    encoded = model.tokenize(rbd_sequences(2))
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    is_excluded = ~(sampler.corruptible_tokens[ids] & mask.bool())
    pll = sampler.pseudo_log_likelihood(ids, mask, is_excluded)
    # The original's loop (spec 2.7): column j masked in every row, one full forward each.
    with torch.no_grad():
        columns = []
        for j in range(ids.shape[1]):
            occluded = ids.clone()
            occluded[:, j] = sampler.mask_token_id
            logits = model(input_ids=occluded, attention_mask=mask, leaves=["mlm"]).leaf_outputs["mlm"].logits
            columns.append(torch.log_softmax(logits[0, :, j], -1).gather(-1, ids[:, j, None])[:, 0])
    expected = pll_from_terms(torch.stack(columns, 1), is_excluded)
    torch.testing.assert_close(pll, expected, atol=1e-5, rtol=1e-5)
    # An edit anywhere rescores the whole row: the step's PLL still equals a fresh full computation.
    state = sampler.run(rbd_sequences(2), 2)
    torch.testing.assert_close(state.pll, sampler.candidate_pll(state.input_ids, state.attention_mask))


@pytest.mark.slow
def test_compiled_model_gives_the_eager_windowed_populations():
    model = conv_tree(*SHAPES["k3"], seed=3)
    seeds = rbd_sequences(4)
    eager = lambo(model).run(seeds, 2)
    compiled_model = copy.deepcopy(model)
    compiled_model.compile()
    torch._dynamo.reset()
    try:
        sampler = lambo(compiled_model)
        assert sampler.pll_radius == 4
        compiled = sampler.run(seeds, 2)
    finally:
        torch._dynamo.reset()
    assert compiled_model._compiled_call_impl is not None  # the model really ran compiled
    assert torch.equal(compiled.input_ids, eager.input_ids)
    assert [row["accepted"] for row in compiled.history] == [row["accepted"] for row in eager.history]
    torch.testing.assert_close(compiled.pll_terms, eager.pll_terms, atol=1e-4, rtol=1e-4)
