import json

import pytest
from model_trees import tiny_branch, tiny_root, two_root_config

from cortex.model import NeuralTreeConfig
from cortex.model.configuration_neural_tree import Conv1dRootConfig, MLPBranchConfig


def test_json_round_trip_is_exact():
    config = two_root_config()
    as_json = config.to_json_string()
    restored = NeuralTreeConfig.from_dict(json.loads(as_json))
    assert restored.to_dict() == config.to_dict()
    assert restored.to_json_string() == as_json
    assert isinstance(restored.root_configs["seq"], Conv1dRootConfig)
    assert isinstance(restored.branch_configs["property"], MLPBranchConfig)
    assert restored.roots["seq"]["kernel_size"] == 5  # defaults are filled in
    assert "root_configs" not in config.to_dict()


def test_trunk_width_defaults():
    config = two_root_config()
    assert config.trunk_width == 16
    concat = NeuralTreeConfig(
        roots={"a": tiny_root("conv1d"), "b": tiny_root("conv1d", out_dim=8)},
        trunk={"type": "concat", "roots": ["a", "b"]},
    )
    assert concat.trunk_width == 24


def _config(**changes):
    nodes = {
        "roots": {"seq": tiny_root("conv1d")},
        "trunk": {"type": "sum", "roots": ["seq"]},
        "branches": {"b": tiny_branch("mlp")},
        "leaves": {"y": {"type": "regressor", "branch": "b"}},
    }
    nodes.update(changes)
    return NeuralTreeConfig(**nodes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"roots": {"seq": tiny_root("lstm")}}, "unknown type 'lstm'.*'conv1d', 'hf', 'transformer'"),
        ({"branches": {"b": tiny_branch("gru")}}, "unknown type 'gru'"),
        ({"leaves": {"y": {"type": "ranker", "branch": "b"}}}, "unknown type 'ranker'"),
        ({"trunk": {"type": "max", "roots": ["seq"]}}, "unknown type 'max'"),
        ({"roots": {"seq": tiny_root("conv1d", kernal_size=3)}}, r"unknown field\(s\) \['kernal_size'\]"),
        ({"leaves": {"y": {"type": "regressor", "branch": "nope"}}}, "missing branch 'nope'"),
        ({"trunk": {"type": "sum", "roots": ["seq", "ghost"]}}, "missing root 'ghost'"),
        ({"leaves": {"m": {"type": "mlm", "branch": "b", "root": "ghost"}}}, "predicts missing root 'ghost'"),
        (
            {"branches": {"b": tiny_branch("mlp", ensemble_size=0)}},
            "ensemble_size must be a positive integer; got 0",
        ),
        ({"branches": {"b": tiny_branch("mlp", in_dim=12)}}, "in_dim 12 but the trunk width is 16"),
        ({"branches": {"b": tiny_branch("mlp", pooling="median")}}, "unknown pooling 'median'"),
        ({"roots": {"seq": tiny_root("transformer", num_heads=3)}}, "not divisible by num_heads=3"),
        ({"roots": {"seq": tiny_root("transformer", block="post_ln")}}, "unknown block 'post_ln'"),
    ],
)
def test_invalid_configs_raise_naming_the_bad_value(changes, message):
    with pytest.raises(ValueError, match=message):
        _config(**changes)


def test_mismatched_widths_without_projection():
    with pytest.raises(ValueError, match="mismatched widths"):
        NeuralTreeConfig(
            roots={"a": tiny_root("conv1d"), "b": tiny_root("conv1d", out_dim=8)},
            trunk={"type": "sum", "roots": ["a", "b"], "project": False},
        )


def test_root_not_in_trunk_is_rejected():
    with pytest.raises(ValueError, match=r"roots \['b'\] are not merged"):
        NeuralTreeConfig(
            roots={"a": tiny_root("conv1d"), "b": tiny_root("conv1d")}, trunk={"type": "sum", "roots": ["a"]}
        )
