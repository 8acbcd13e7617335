"""`NeuralTreeModel.forward` compiles with fullgraph=True and zero graph breaks for every node type.

Backend: "aot_eager" (dynamo tracing + AOTAutograd functionalisation of forward and backward, the stages where
graph breaks and tracing errors arise). Inductor adds only code generation, which costs about a minute of C++
compilation per tree on 2 CPU cores, so the inductor check is marked slow.
Every tree has a corruption process attached (mask on ids, gaussian on embeddings) and gets per-example noise
levels as a (B,) tensor; a second call with other noise levels and other ids must not recompile.
"""

from __future__ import annotations

import pytest
import torch
from model_trees import SEQUENCES, tiny_bert_root, tiny_branch, tiny_esm_root, tiny_root
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from cortex.corruption import GaussianCorruption, MaskCorruption
from cortex.model import NeuralTreeConfig, NeuralTreeModel

# Same longest length as SEQUENCES (so the same padded shape), other residues.
OTHER_SEQUENCES = [SEQUENCES[0][::-1], "ACDEFGHIK", "WYWYWYMKTA"]


def _heads() -> tuple[dict, dict]:
    """Every branch type (mlp, conv1d, transformer), pooling (mean, weighted_mean, attention) and leaf type."""
    branches = {
        "property": tiny_branch("mlp", ensemble_size=2, pooling="mean"),
        "generation": tiny_branch("conv1d", pooling="weighted_mean"),
        "sequence": tiny_branch("transformer", pooling="attention", num_heads=2),
    }
    leaves = {
        "expression": {"type": "regressor", "branch": "property", "out_dim": 2},
        "family": {"type": "classifier", "branch": "sequence", "num_classes": 3},
        "seq_mlm": {"type": "mlm", "branch": "generation", "root": "ids"},
        "seq_clm": {"type": "causal_lm", "branch": "sequence", "root": "ids"},
    }
    return branches, leaves


def native_tree(trunk: str) -> tuple[NeuralTreeModel, dict[str, str]]:
    """Conv1d and transformer roots merged by `trunk`; mask corruption on one, gaussian on the other."""
    branches, leaves = _heads()
    config = NeuralTreeConfig(
        roots={
            "ids": tiny_root("conv1d"),
            "embeds": tiny_root("transformer", out_dim=8, channel_dim=8, num_heads=2),
        },
        trunk={"type": trunk, "roots": ["ids", "embeds"]},
        branches=branches,
        leaves=leaves,
    )
    torch.manual_seed(0)
    model = NeuralTreeModel(config)
    model.attach_corruption({"ids": MaskCorruption(model.get_tokenizer("ids").mask_token_id)})
    model.attach_corruption({"embeds": GaussianCorruption(noise_variance=10.0)})
    return model, {"ids": "ids", "embeds": "embeds"}


def hf_tree(kind: str, directory) -> tuple[NeuralTreeModel, dict[str, str]]:
    """One hf root under every head: tiny BERT with mask corruption and a concat trunk, or tiny ESM with
    gaussian corruption and a sum trunk."""
    branches, leaves = _heads()
    root = tiny_bert_root() if kind == "bert" else tiny_esm_root(directory)
    config = NeuralTreeConfig(
        roots={"ids": root},
        trunk={"type": "concat" if kind == "bert" else "sum", "roots": ["ids"]},
        branches=branches,
        leaves=leaves,
    )
    torch.manual_seed(0)
    model = NeuralTreeModel(config)
    tokenizer = model.get_tokenizer("ids")
    process = MaskCorruption(tokenizer.mask_token_id) if kind == "bert" else GaussianCorruption()
    model.attach_corruption({"ids": process})
    return model, {"ids": "ids"}


def root_inputs(model: NeuralTreeModel, roots: dict[str, str], sequences, noise_level):
    return {name: {**model.tokenize(sequences, name), "noise_level": noise_level.clone()} for name in roots}


TREES = {
    "conv1d+transformer/sum": lambda tmp_path: native_tree("sum"),
    "hf-bert/concat": lambda tmp_path: hf_tree("bert", tmp_path),
    "hf-esm/sum": lambda tmp_path: hf_tree("esm", tmp_path),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _assert_outputs_close(compiled, eager) -> None:
    for name, output in eager.leaf_outputs.items():
        for key, value in output.items():
            torch.testing.assert_close(compiled.leaf_outputs[name][key], value, rtol=1e-5, atol=1e-5)
    for name, output in eager.root_outputs.items():
        torch.testing.assert_close(compiled.root_outputs[name].is_corrupted, output.is_corrupted)
        torch.testing.assert_close(compiled.root_outputs[name].inputs_embeds, output.inputs_embeds)


@pytest.mark.parametrize("tree", list(TREES))
def test_forward_compiles_fullgraph_matches_eager_and_never_recompiles(tree, tmp_path):
    model, roots = TREES[tree](tmp_path)
    model.eval()
    levels = torch.tensor([0.0, 0.35, 0.9])
    inputs = root_inputs(model, roots, SEQUENCES, levels)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)

    torch.manual_seed(1)
    out = compiled(inputs)
    torch.manual_seed(1)
    expected = model(inputs)
    _assert_outputs_close(out, expected)
    # Corruption really ran inside the graph: some positions of the noisy examples changed.
    assert bool(out.root_outputs["ids"].is_corrupted[1:].any())
    assert counter.frame_count == 1
    assert sum(counters["graph_break"].values()) == 0

    # Other noise levels and other ids of the same padded shape reuse the graph.
    other = root_inputs(model, roots, OTHER_SEQUENCES, torch.tensor([1.0, 0.05, 0.5]))
    assert other["ids"]["input_ids"].shape == inputs["ids"]["input_ids"].shape
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch.manual_seed(2)
        out = compiled(other)
    torch.manual_seed(2)
    _assert_outputs_close(out, model(other))
    assert counter.frame_count == 1


def test_compiled_training_loss_and_gradients_match_eager():
    """Labels put every leaf's loss inside the graph (train mode, float64 sampled-style noise levels): still one
    graph without breaks; loss and gradients equal eager."""
    model, roots = native_tree("sum")
    model.train()
    inputs = root_inputs(model, roots, SEQUENCES, torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64))
    labels = {
        "expression": torch.randn(3, 2),
        "family": torch.tensor([0, 2, -100]),
        "seq_mlm": None,
        "seq_clm": None,
    }
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)

    torch.manual_seed(3)
    compiled_loss = compiled(inputs, labels=labels).loss
    compiled_loss.backward()
    compiled_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    eager_loss = model(inputs, labels=labels).loss
    eager_loss.backward()
    eager_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(compiled_loss, eager_loss)
    assert len(eager_grads) > 20
    for name, grad in compiled_grads.items():
        # AOTAutograd returns zeros where eager leaves None (e.g. the pooling of a branch only an LM leaf uses).
        expected = eager_grads.get(name, torch.zeros_like(grad))
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5, msg=name)
    assert eager_grads.keys() <= compiled_grads.keys()
    assert counter.frame_count == 1
    assert sum(counters["graph_break"].values()) == 0


def test_in_place_compile_keeps_state_dict_keys_and_output():
    model, roots = native_tree("sum")
    model.eval()
    keys = list(model.state_dict())
    inputs = root_inputs(model, roots, SEQUENCES, torch.zeros(3))
    expected = model(inputs)
    model.compile(backend="aot_eager", fullgraph=True)
    assert list(model.state_dict()) == keys
    assert not any("_orig_mod" in key for key in model.state_dict())
    _assert_outputs_close(model(inputs), expected)


@pytest.mark.slow
def test_inductor_forward_matches_eager():
    from torch._inductor import config as inductor_config

    model, roots = native_tree("sum")
    model.eval()
    inputs = root_inputs(model, roots, SEQUENCES, torch.tensor([0.0, 0.35, 0.9]))
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    # fallback_random: inductor draws with the same aten RNG ops as eager, so seeded corruption matches.
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(1)
        out = compiled(inputs)
    torch.manual_seed(1)
    _assert_outputs_close(out, model(inputs))
