"""NeuralTreeModel.receptive_radius: the radius is exact and tight on random conv trees (kernel sizes odd and
even, dilation, blocks, ensembles, with and without positions, masks and norms), a window forward with
position_ids gives the full forward's outputs, global nodes answer None, bad names are ValueErrors."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
from model_trees import tiny_bert_root, tiny_branch, tiny_root

from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.model.layers import same_padding_radius

LENGTH = 64


def random_conv_tree(seed: int) -> tuple[NeuralTreeModel, int]:
    """A random local tree (conv root; conv, mlp or block-free transformer branch; MLM leaf) and its radius
    computed by hand from the configs."""
    rng = random.Random(seed)
    kernel, dilation, blocks = rng.choice([1, 2, 3, 4, 5]), rng.choice([1, 2, 3]), rng.choice([1, 2, 3])
    root = tiny_root(
        "conv1d", max_length=LENGTH, kernel_size=kernel, dilation=dilation, num_blocks=blocks,
        pos_encoding=rng.random() < 0.5, mask_block_input=rng.random() < 0.5, layernorm=rng.random() < 0.7,
        dropout=0.1,
    )  # fmt: skip
    # Blocks after the first and before the last use the dilation (spec 2.2).
    dilations = [1 if index in (0, blocks - 1) else dilation for index in range(blocks)]
    radius = sum(2 * same_padding_radius(kernel, d) for d in dilations)
    branch_type = rng.choice(["conv1d", "mlp", "transformer"])
    ensemble = rng.choice([1, 2, 3])
    if branch_type == "conv1d":
        branch_kernel, branch_blocks = rng.choice([2, 3, 5]), rng.choice([0, 1, 2])
        branch = tiny_branch(
            "conv1d", kernel_size=branch_kernel, num_blocks=branch_blocks, ensemble_size=ensemble
        )
        radius += branch_blocks * 2 * same_padding_radius(branch_kernel)
    elif branch_type == "mlp":
        branch = tiny_branch("mlp", ensemble_size=ensemble)
    else:
        branch = tiny_branch("transformer", num_blocks=0, ensemble_size=ensemble)
    torch.manual_seed(seed)
    config = NeuralTreeConfig(
        roots={"protein": root},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"generation": branch, "property": tiny_branch("conv1d")},
        leaves={
            "mlm": {"type": "mlm", "branch": "generation", "root": "protein"},
            "score": {"type": "regressor", "branch": "property"},
        },
    )
    return NeuralTreeModel(config).eval(), radius


def gfp_ids(model: NeuralTreeModel, num: int = 2) -> dict[str, torch.Tensor]:
    """Real GFP sequences cut to LENGTH, the last one shorter (padding in the batch)."""
    sequences = pd.read_csv("data/gfp_sarkisyan2016.csv.gz", nrows=num)["sequence"].tolist()
    sequences = [s[:LENGTH] for s in sequences[:-1]] + [sequences[-1][: LENGTH - 9]]
    return model.tokenize(sequences)


def mlm_logits(model: NeuralTreeModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(root_inputs={"protein": inputs}, leaves=["mlm"]).leaf_outputs["mlm"].logits


@pytest.mark.parametrize("seed", range(8))
def test_radius_is_exact_and_tight(seed):
    model, expected = random_conv_tree(seed)
    radius = model.receptive_radius("protein", "mlm")
    assert radius == expected
    encoded = gfp_ids(model)
    base = mlm_logits(model, encoded)  # (E, B, L, V)
    position = LENGTH // 2
    changed = encoded["input_ids"].clone()
    changed[0, position] = 7 if int(changed[0, position]) != 7 else 8
    moved = (mlm_logits(model, {**encoded, "input_ids": changed}) - base).abs().amax(dim=(0, 3))[0]  # (L,)
    distance = (torch.arange(LENGTH) - position).abs()
    assert float(moved.masked_fill(distance <= radius, 0.0).max()) == 0.0
    if radius < position:  # tight: some output exactly `radius` away moves
        assert float(moved[distance == radius].max()) > 0.0


@pytest.mark.parametrize("seed", range(8))
def test_window_forward_equals_full_forward(seed):
    model, _ = random_conv_tree(seed)
    radius = model.receptive_radius("protein", "mlm")
    encoded = gfp_ids(model)
    full = mlm_logits(model, encoded)
    width = min(2 * radius + 1, LENGTH)
    for position in (0, 1, radius, LENGTH // 2, LENGTH - 12, LENGTH - 1):
        begin = min(max(position - radius, 0), LENGTH - width)
        columns = torch.arange(begin, begin + width)
        window = {
            "input_ids": encoded["input_ids"][:, columns],
            "attention_mask": encoded["attention_mask"][:, columns],
            "position_ids": columns.expand(2, -1),
        }
        local = mlm_logits(model, window)[:, :, position - begin]
        torch.testing.assert_close(local, full[:, :, position], atol=1e-5, rtol=1e-5)


def test_position_ids_default_to_the_sequence_positions():
    model, _ = random_conv_tree(0)
    encoded = gfp_ids(model)
    positions = torch.arange(LENGTH).expand(2, -1)
    torch.testing.assert_close(
        mlm_logits(model, {**encoded, "position_ids": positions}), mlm_logits(model, encoded)
    )


def test_global_nodes_have_no_radius():
    transformer_root = NeuralTreeConfig(
        roots={"protein": tiny_root("transformer")},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"generation": tiny_branch("conv1d"), "attention": tiny_branch("transformer", num_blocks=1)},
        leaves={
            "mlm": {"type": "mlm", "branch": "generation", "root": "protein"},
            "mlm_attention": {"type": "mlm", "branch": "attention", "root": "protein"},
            "score": {"type": "regressor", "branch": "generation"},
        },
    )
    model = NeuralTreeModel(transformer_root)
    assert model.receptive_radius("protein", "mlm") is None
    conv = NeuralTreeConfig(
        roots={"protein": tiny_root("conv1d", kernel_size=3)},
        trunk={"type": "sum", "roots": ["protein"]},
        branches=transformer_root.branches,
        leaves=transformer_root.leaves,
    )
    model = NeuralTreeModel(conv)
    assert model.receptive_radius("protein", "mlm") == 2 * 2 + 2 * 4  # root k=3, branch k=5, 2 blocks each
    assert model.receptive_radius("protein", "mlm_attention") is None  # attention branch
    assert model.receptive_radius("protein", "score") is None  # pooled features
    bert = NeuralTreeConfig(
        roots={"antibody": tiny_bert_root()},
        trunk={"type": "sum", "roots": ["antibody"]},
        branches={"generation": tiny_branch("mlp")},
        leaves={"mlm": {"type": "mlm", "branch": "generation", "root": "antibody"}},
    )
    model = NeuralTreeModel(bert)
    assert model.receptive_radius("antibody", "mlm") is None
    ids = torch.ones(1, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="hf roots take no position_ids"):
        model(root_inputs={"antibody": {"input_ids": ids, "position_ids": torch.arange(5)[None]}})


def test_bad_names_are_value_errors():
    model, _ = random_conv_tree(1)
    with pytest.raises(ValueError, match="unknown leaf 'nope'"):
        model.receptive_radius("protein", "nope")
    with pytest.raises(ValueError, match="unknown root 'dna'"):
        model.receptive_radius("dna", "mlm")


def test_lora_on_conv_layers_keeps_the_radius_exact():
    from cortex.peft import add_lora

    model, radius = random_conv_tree(7)
    encoded = gfp_ids(model)
    plain = mlm_logits(model, encoded)
    add_lora(model, roots=["protein"], target_modules=["conv_1", "conv_2"], r=2)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: make the adapters change the outputs
            torch.nn.init.normal_(parameter)
    assert model.receptive_radius("protein", "mlm") == radius
    full = mlm_logits(model, encoded)
    assert not torch.allclose(full, plain), (
        "the adapters must change the outputs for the test to mean anything"
    )
    begin, position = 20, 20 + radius
    columns = torch.arange(begin, begin + 2 * radius + 1)
    window = {
        "input_ids": encoded["input_ids"][:, columns],
        "attention_mask": encoded["attention_mask"][:, columns],
        "position_ids": columns.expand(2, -1),
    }
    torch.testing.assert_close(
        mlm_logits(model, window)[:, :, radius], full[:, :, position], atol=1e-5, rtol=1e-5
    )
