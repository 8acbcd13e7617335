"""Contract tests parametrized over every node type: shapes, padding invariance, inputs_embeds, ensembles."""

import pytest
import torch
from model_trees import SEQUENCES, tiny_bert_root, tiny_branch, tiny_esm_root, tiny_root

from cortex.corruption import GaussianCorruption, MaskCorruption
from cortex.model import NeuralTreeConfig, NeuralTreeModel

ROOT_KINDS = ["conv1d", "transformer", "transformer_causal", "hf_bert", "hf_esm"]
BRANCH_KINDS = [
    ("conv1d", "mean"),
    ("conv1d", "weighted_mean"),
    ("transformer", "attention"),
    ("transformer", "mean"),
    ("mlp", "weighted_mean"),
    ("mlp", "attention"),
]


def root_node(kind: str, tmp_path) -> dict:
    if kind == "hf_bert":
        return tiny_bert_root()
    if kind == "hf_esm":
        return tiny_esm_root(str(tmp_path))
    if kind == "transformer_causal":
        return tiny_root("transformer", is_causal=True)
    return tiny_root(kind)


def one_root_model(root: dict, branch: dict | None = None) -> NeuralTreeModel:
    torch.manual_seed(0)
    config = NeuralTreeConfig(
        roots={"seq": root},
        trunk={"type": "sum", "roots": ["seq"]},
        branches={"b": branch or tiny_branch("conv1d", ensemble_size=3)},
        leaves={
            "y": {"type": "regressor", "branch": "b", "out_dim": 2},
            "c": {"type": "classifier", "branch": "b", "num_classes": 3},
            "mlm": {"type": "mlm", "branch": "b", "root": "seq"},
            "lm": {"type": "causal_lm", "branch": "b", "root": "seq"},
        },
    )
    return NeuralTreeModel(config).eval()


def _short_alone_and_padded(model):
    alone = model.tokenize([SEQUENCES[1]])
    padded = model.tokenize([SEQUENCES[1], SEQUENCES[0]])
    return alone, padded, alone["input_ids"].shape[1]


@pytest.mark.parametrize("kind", ROOT_KINDS)
def test_root_contract(kind, tmp_path):
    model = one_root_model(root_node(kind, tmp_path))
    root = model.roots["seq"]
    inputs = model.tokenize(SEQUENCES)
    batch, length = inputs["input_ids"].shape
    with torch.no_grad():
        out = model(**inputs)
        by_embeds = model(
            inputs_embeds=root.embed(inputs["input_ids"]), attention_mask=inputs["attention_mask"]
        )
        alone, padded, short = _short_alone_and_padded(model)
        out_alone = model(**alone)
        out_padded = model(**padded)
    root_out = out.root_outputs["seq"]
    assert root_out.last_hidden_state.shape == (batch, length, root.out_dim)
    assert root_out.is_corrupted.dtype == torch.bool and not root_out.is_corrupted.any()
    assert torch.equal(root_out.clean_ids, root_out.noisy_ids)
    assert root.get_input_embeddings().weight.shape[0] == root.vocab_size
    assert out.leaf_outputs["y"].loc.shape == (3, batch, 2)
    assert out.leaf_outputs["c"].logits.shape == (3, batch, 3)
    assert out.leaf_outputs["mlm"].logits.shape == (3, batch, length, root.vocab_size)
    torch.testing.assert_close(
        by_embeds.leaf_outputs["y"].loc, out.leaf_outputs["y"].loc, rtol=0, atol=0
    )  # the inputs_embeds path is the same computation
    # Real positions do not change when padding is added to the batch.
    torch.testing.assert_close(
        out_padded.root_outputs["seq"].last_hidden_state[0, :short],
        out_alone.root_outputs["seq"].last_hidden_state[0],
        rtol=1e-5,
        atol=1e-5,
    )
    torch.testing.assert_close(out_padded.leaf_outputs["y"].loc[:, 0], out_alone.leaf_outputs["y"].loc[:, 0])


@pytest.mark.parametrize(("branch_type", "pooling"), BRANCH_KINDS)
def test_branch_contract(branch_type, pooling):
    model = one_root_model(tiny_root("conv1d"), tiny_branch(branch_type, pooling=pooling, ensemble_size=2))
    inputs = model.tokenize(SEQUENCES)
    with torch.no_grad():
        out = model(**inputs)
        alone, padded, short = _short_alone_and_padded(model)
        out_alone, out_padded = model(**alone), model(**padded)
    branch_out = out.branch_outputs["b"]
    batch, length = inputs["input_ids"].shape
    assert branch_out.last_hidden_state.shape == (2, batch, length, 8)
    assert branch_out.pooled.shape == (2, batch, 8)
    assert not torch.equal(branch_out.pooled[0], branch_out.pooled[1])  # independent members
    torch.testing.assert_close(
        out_padded.branch_outputs["b"].pooled[:, 0], out_alone.branch_outputs["b"].pooled[:, 0]
    )
    torch.testing.assert_close(
        out_padded.branch_outputs["b"].last_hidden_state[:, 0, :short],
        out_alone.branch_outputs["b"].last_hidden_state[:, 0],
    )


@pytest.mark.parametrize(
    "legacy",
    [
        tiny_root("conv1d", mask_block_input=False),
        tiny_root("transformer", block="cortex_v1", mask_padding_in_attention=False),
    ],
)
def test_original_behaviour_flags_leak_padding(legacy):
    """The original's blocks (A2, A4) let pads change real positions; the flags reproduce that on purpose."""
    model = one_root_model(legacy)
    alone, padded, short = _short_alone_and_padded(model)
    with torch.no_grad():
        real_alone = model(**alone).root_outputs["seq"].last_hidden_state[0]
        real_padded = model(**padded).root_outputs["seq"].last_hidden_state[0, :short]
    assert not torch.allclose(real_alone, real_padded, atol=1e-4)


def test_causal_root_does_not_see_the_future():
    model = one_root_model(
        tiny_root("transformer", is_causal=True), tiny_branch("transformer", is_causal=True)
    )
    a = model.tokenize(["MKTAYIAK"])
    b = model.tokenize(["MKTAYWWW"])
    with torch.no_grad():
        ha, hb = (
            model(**a).branch_outputs["b"].last_hidden_state,
            model(**b).branch_outputs["b"].last_hidden_state,
        )
    torch.testing.assert_close(ha[:, :, :5], hb[:, :, :5])
    assert not torch.allclose(ha[:, :, 5:], hb[:, :, 5:])


@pytest.mark.parametrize("trunk_type", ["sum", "concat"])
def test_trunks_merge_roots_of_different_widths(trunk_type):
    config = NeuralTreeConfig(
        roots={"a": tiny_root("conv1d"), "b": tiny_root("transformer", out_dim=8, channel_dim=8)},
        trunk={"type": trunk_type, "roots": ["a", "b"], "out_dim": 12},
        branches={"p": tiny_branch("mlp")},
        leaves={"y": {"type": "regressor", "branch": "p"}},
    )
    model = NeuralTreeModel(config).eval()
    short = model.tokenize(["MKTAY", "MK"], "a")
    longer = model.tokenize(["MKTAY", "MKTAYIAK"], "b")
    longer_a = model.tokenize(["MKTAY", "MKTAYIAK"], "a")
    out = model({"a": longer_a, "b": longer})
    assert out.trunk_output.last_hidden_state.shape == (2, 8, 12)
    assert out.trunk_output.attention_mask.tolist()[0] == [1] * 5 + [0] * 3
    with pytest.raises(ValueError, match="trunk roots must share"):
        model({"a": short, "b": longer})


def test_mask_corruption_on_ids_and_noise_level_zero_is_identity():
    model = one_root_model(tiny_root("conv1d"))
    tokenizer = model.get_tokenizer("seq")
    model.attach_corruption({"seq": MaskCorruption(mask_token_id=tokenizer.mask_token_id)})
    inputs = model.tokenize(SEQUENCES)
    batch = inputs["input_ids"].shape[0]
    clean = model(**inputs)
    zero = model({"seq": {**inputs, "noise_level": torch.zeros(batch)}})
    full = model({"seq": {**inputs, "noise_level": torch.ones(batch)}})
    torch.testing.assert_close(zero.leaf_outputs["y"].loc, clean.leaf_outputs["y"].loc)
    root_out = full.root_outputs["seq"]
    real = inputs["attention_mask"].bool()
    assert torch.equal(root_out.is_corrupted, real)
    assert (root_out.noisy_ids[real] == tokenizer.mask_token_id).all()
    assert torch.equal(root_out.clean_ids, inputs["input_ids"])
    loss = model.leaves["mlm"].loss(full.leaf_outputs["mlm"], root_out.clean_ids, root_out.is_corrupted)
    assert loss > 0 and torch.isfinite(loss)
    assert sum(t.numel() for t in model.state_dict().values()) == sum(
        t.numel() for t in one_root_model(tiny_root("conv1d")).state_dict().values()
    )


def test_gaussian_corruption_acts_on_embeddings():
    model = one_root_model(tiny_root("transformer"))
    model.attach_corruption({"seq": GaussianCorruption(noise_variance=1.0)})
    inputs = model.tokenize(SEQUENCES)
    batch = inputs["input_ids"].shape[0]
    out = model({"seq": {**inputs, "noise_level": torch.full((batch,), 0.9)}})
    root_out = out.root_outputs["seq"]
    assert torch.equal(root_out.noisy_ids, inputs["input_ids"])  # ids untouched
    assert root_out.is_corrupted.any()
    assert not torch.allclose(root_out.inputs_embeds, model.roots["seq"].embed(inputs["input_ids"]))


def test_attach_corruption_rejects_unknown_target():
    model = one_root_model(tiny_root("conv1d"))
    process = MaskCorruption(mask_token_id=31)
    process.acts_on = "logits"
    with pytest.raises(ValueError, match="acts_on='logits'"):
        model.attach_corruption({"seq": process})
    with pytest.raises(ValueError, match="unknown root 'nope'"):
        model.attach_corruption({"nope": MaskCorruption(mask_token_id=31)})
