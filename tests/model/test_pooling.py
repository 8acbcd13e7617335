"""Max pooling: a per-channel max over real positions that padding never wins, in eager and compiled graphs."""

import pytest
import torch
from model_trees import SEQUENCES, tiny_branch, tiny_root

from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.model.layers import POOLING_TYPES, MaxPooling, build_pooling


def _features_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 6, 4) features whose pad positions hold the largest values, and a (3, 6) mask with 6, 2 and 0 real
    positions (the last row has none)."""
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    mask = torch.zeros(3, 6, dtype=torch.long)
    mask[0] = 1
    mask[1, :2] = 1
    x = torch.where(mask.bool()[..., None], x, torch.full_like(x, 100.0))
    return x, mask


def test_max_pooling_equals_the_max_over_real_positions_and_ignores_padding():
    x, mask = _features_and_mask()
    pooled = MaxPooling()(x, mask)
    assert pooled.shape == (3, 4)
    torch.testing.assert_close(pooled[0], x[0].max(dim=0).values)
    torch.testing.assert_close(pooled[1], x[1, :2].max(dim=0).values)  # the 100s at pads never win
    torch.testing.assert_close(pooled[2], torch.zeros(4))  # no real position: 0, as mean pooling
    assert isinstance(build_pooling("max", 4), MaxPooling)
    assert "max" in POOLING_TYPES


def test_max_pooling_gradient_reaches_only_the_winning_real_position():
    x, mask = _features_and_mask()
    x.requires_grad_(True)
    MaxPooling()(x, mask)[1].sum().backward()
    winners = x[1, :2].argmax(dim=0)  # (4,)
    expected = torch.zeros(6, 4)
    expected[winners, torch.arange(4)] = 1.0
    torch.testing.assert_close(x.grad[1], expected)
    assert x.grad[0].abs().sum() == 0 and x.grad[2].abs().sum() == 0


def test_max_pooling_compiles_to_one_graph_for_every_mask():
    x, mask = _features_and_mask()
    compiled = torch.compile(MaxPooling(), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, mask), MaxPooling()(x, mask))
    other = torch.ones_like(mask)
    torch.testing.assert_close(compiled(x, other), x.amax(dim=1))


@pytest.mark.parametrize("branch_type", ["conv1d", "mlp", "transformer"])
def test_max_pooled_branch_gives_a_sequence_the_same_output_alone_and_padded(branch_type):
    torch.manual_seed(0)
    config = NeuralTreeConfig(
        roots={"seq": tiny_root("conv1d")},
        trunk={"type": "sum", "roots": ["seq"]},
        branches={"b": tiny_branch(branch_type, pooling="max", ensemble_size=2)},
        leaves={"y": {"type": "regressor", "branch": "b"}},
    )
    assert config.branch_configs["b"].pooling == "max"
    model = NeuralTreeModel(config).eval()
    with torch.no_grad():
        alone = model(**model.tokenize([SEQUENCES[1]]))
        padded = model(**model.tokenize([SEQUENCES[1], SEQUENCES[0]]))
        hidden = padded.branch_outputs["b"].last_hidden_state[:, 0, : len(SEQUENCES[1])]  # (E, L, D)
    torch.testing.assert_close(
        padded.branch_outputs["b"].pooled[:, 0], alone.branch_outputs["b"].pooled[:, 0]
    )
    torch.testing.assert_close(padded.branch_outputs["b"].pooled[:, 0], hidden.amax(dim=1))
    torch.testing.assert_close(padded.leaf_outputs["y"].loc[:, 0], alone.leaf_outputs["y"].loc[:, 0])
