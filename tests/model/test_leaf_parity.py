"""Leaf transform and losses against values recorded from the original cortex (tests/parity, README 1-2)."""

import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file

from cortex.model.configuration_neural_tree import ClassifierLeafConfig, RegressorLeafConfig
from cortex.model.leaves import (
    ClassifierLeaf,
    ClassifierOutput,
    RegressorLeaf,
    gaussian_natural_loss,
    natural_gaussian_params,
    smoothed_cross_entropy,
)

PARITY = pathlib.Path(__file__).parents[1] / "parity"
pytestmark = pytest.mark.parity


def _fixture(name):
    return json.loads((PARITY / f"{name}.json").read_text()), load_file(str(PARITY / f"{name}.safetensors"))


REGRESSOR_META, REGRESSOR = _fixture("regressor_leaf")
CLASSIFIER_META, CLASSIFIER = _fixture("classifier_leaf")


def _alpha(case, tensors):
    if case["alpha_kind"] == "scalar":
        return case["alpha"]
    alpha = tensors[f"{case['name']}.alpha"]
    return alpha.reshape(alpha.shape[0], *([1] * (tensors[f"{case['name']}.targets"].dim() - 1)))


GRID_CASES = [c for c in REGRESSOR_META["cases"] if "loss" in c and "alpha_kind" in c]


@pytest.mark.parametrize("case", GRID_CASES, ids=lambda c: c["name"])
def test_regressor_transform_and_loss(case):
    name = case["name"]
    eta1, eta2, mean, var = natural_gaussian_params(REGRESSOR[f"{name}.head_raw"], case["var_lb"])
    torch.testing.assert_close(eta1, REGRESSOR[f"{name}.eta1"], rtol=1e-6, atol=0)
    torch.testing.assert_close(eta2, REGRESSOR[f"{name}.eta2"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mean, REGRESSOR[f"{name}.loc"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(var.sqrt(), REGRESSOR[f"{name}.scale"], rtol=1e-6, atol=1e-7)
    loss = gaussian_natural_loss(
        eta1, eta2, REGRESSOR[f"{name}.targets"], _alpha(case, REGRESSOR), case["nominal_label_var"]
    )
    expected = torch.tensor(case["loss"], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    if case["loss_dtype"] == "float64":
        assert loss.dtype == torch.float64


def test_regressor_extreme_head_values_and_float64():
    case = next(c for c in REGRESSOR_META["cases"] if c["name"] == "extreme_head_values")
    eta1, eta2, mean, var = natural_gaussian_params(REGRESSOR["extreme_head_values.head_raw"], case["var_lb"])
    torch.testing.assert_close(eta2, REGRESSOR["extreme_head_values.eta2"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mean, REGRESSOR["extreme_head_values.loc"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(var.sqrt(), REGRESSOR["extreme_head_values.scale"], rtol=1e-6, atol=1e-7)
    rows = case["loss_rows"]
    targets = REGRESSOR["extreme_head_values.targets"][rows]
    for alpha, key in case["loss_keys"].items():
        loss = gaussian_natural_loss(eta1[rows], eta2[rows], targets, float(alpha), case["nominal_label_var"])
        torch.testing.assert_close(loss, REGRESSOR[key], rtol=1e-6, atol=1e-6)
    f64 = {
        k.removeprefix("float64_per_example."): v
        for k, v in REGRESSOR.items()
        if k.startswith("float64_per_")
    }
    eta1, eta2, _, _ = natural_gaussian_params(f64["head_raw"])
    alpha = f64["alpha"].reshape(-1, 1)
    loss = gaussian_natural_loss(eta1, eta2, f64["targets"], alpha, 0.01)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, f64["loss"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gaussian_natural_loss(eta1, eta2, f64["targets"], 0.0, 0.01), f64["loss_nll"])


def test_regressor_leaf_with_standardisation_matches_outcome_transform():
    t = {
        k.removeprefix("outcome_transform."): v
        for k, v in REGRESSOR.items()
        if k.startswith("outcome_transform.")
    }
    num_targets = t["targets"].shape[1]
    leaf = RegressorLeaf(RegressorLeafConfig(branch="b", out_dim=num_targets, nominal_label_var=0.01), 4, 1)
    leaf.fit_target_standardization(t["fit_targets"])
    torch.testing.assert_close(leaf.target_mean, t["fitted_means"].reshape(-1))
    torch.testing.assert_close(leaf.target_std, t["fitted_stdvs"].reshape(-1))
    out = leaf.transform(t["head_raw"][None])
    torch.testing.assert_close(out.loc[0], t["loc"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.scale[0], t["scale"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        leaf.loss(out, t["targets"], t["alpha"]).double(), t["loss"].double(), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        leaf.loss(out, t["targets"], 0.0).double(), t["loss_nll"].double(), rtol=1e-6, atol=1e-6
    )


def test_regressor_nan_labels_are_left_out():
    t = {
        k.removeprefix("outcome_transform."): v
        for k, v in REGRESSOR.items()
        if k.startswith("outcome_transform.")
    }
    leaf = RegressorLeaf(RegressorLeafConfig(branch="b", out_dim=t["targets"].shape[1]), 4, 1)
    out = leaf.transform(t["head_raw"][None])
    with_nan = t["targets"].clone()
    with_nan[0, 0] = float("nan")
    loss = leaf.loss(out, with_nan, 0.0)
    assert torch.isfinite(loss)
    keep = torch.ones_like(with_nan, dtype=torch.bool)
    keep[0, 0] = False
    targets = (t["targets"] - leaf.target_mean) / leaf.target_std
    expected = gaussian_natural_loss(out.eta1[0][keep], out.eta2[0][keep], targets[keep], 0.0)
    torch.testing.assert_close(loss, expected)


def test_regressor_head_forward_matches_original_state():
    prefix = "head_forward.state."
    state = {k.removeprefix(prefix): v for k, v in REGRESSOR.items() if k.startswith(prefix)}
    in_dim, out_dim = state["encoder.0.weight"].shape[1], state["encoder.2.weight"].shape[0] // 2
    leaf = RegressorLeaf(RegressorLeafConfig(branch="b", out_dim=out_dim, num_layers=1), in_dim, 1)
    leaf.members[0].load_state_dict({k.removeprefix("encoder."): v for k, v in state.items()})
    head = leaf.members[0](REGRESSOR["head_forward.pooled_features"])
    out = leaf.transform(head[None])
    torch.testing.assert_close(out.loc[0], REGRESSOR["head_forward.loc"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.scale[0], REGRESSOR["head_forward.scale"], rtol=1e-5, atol=1e-6)


CLASSIFIER_LOSS_CASES = [c for c in CLASSIFIER_META["cases"] if "loss_key" in c]


@pytest.mark.parametrize("case", CLASSIFIER_LOSS_CASES, ids=lambda c: c["name"])
def test_classifier_loss(case):
    group = case["loss_key"].split(".")[0]
    alpha = case["alpha"]
    if isinstance(alpha, str):
        alpha = CLASSIFIER[alpha.removeprefix("tensor ")]
    logits, targets = CLASSIFIER[f"{group}.logits"], CLASSIFIER[f"{group}.targets"]
    loss = smoothed_cross_entropy(logits, targets, alpha)
    torch.testing.assert_close(
        loss.double(), torch.tensor(case["loss"], dtype=torch.float64), rtol=1e-6, atol=1e-6
    )
    assert str(loss.dtype) == f"torch.{case['loss_dtype']}"
    leaf = ClassifierLeaf(ClassifierLeafConfig(branch="b", num_classes=logits.shape[1]), 4, 1)
    leaf_loss = leaf.loss(ClassifierOutput(logits=logits[None]), targets, alpha)
    torch.testing.assert_close(leaf_loss, loss)


def test_classifier_missing_labels_are_left_out():
    logits, targets = CLASSIFIER["K5.logits"], CLASSIFIER["K5.targets"].clone()
    targets[::2] = -100
    expected = smoothed_cross_entropy(logits[1::2], targets[1::2], 0.1)
    torch.testing.assert_close(smoothed_cross_entropy(logits, targets, 0.1), expected)


def test_classifier_head_forward_matches_original_members():
    members = sorted({k.split(".")[1] for k in CLASSIFIER if k.startswith("head_forward.member")})
    first = {
        k.split(".state.")[1]: v
        for k, v in CLASSIFIER.items()
        if k.startswith(f"head_forward.{members[0]}.state.")
    }
    in_dim, num_classes = first["encoder.1.weight"].shape[1], first["encoder.3.weight"].shape[0]
    config = ClassifierLeafConfig(branch="b", num_classes=num_classes, num_layers=1, layernorm=True)
    leaf = ClassifierLeaf(config, in_dim, len(members))
    for index, member in enumerate(members):
        prefix = f"head_forward.{member}.state."
        state = {
            k.removeprefix(prefix + "encoder."): v for k, v in CLASSIFIER.items() if k.startswith(prefix)
        }
        leaf.members[index].load_state_dict(state)
    pooled = CLASSIFIER["head_forward.pooled_features"]
    logits = torch.stack([m(pooled) for m in leaf.members])
    expected = torch.stack([CLASSIFIER[f"head_forward.{m}.logits"] for m in members])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        logits.softmax(-1), CLASSIFIER["head_forward.class_probs"], rtol=1e-5, atol=1e-6
    )
