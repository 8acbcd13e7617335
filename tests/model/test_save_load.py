"""save_pretrained / from_pretrained round trips, in the same process and in a fresh one."""

import json
import os
import subprocess
import sys

import pytest
import torch
from model_trees import SEQUENCES, antiberty_files, two_root_config
from safetensors.torch import save_file

import cortex  # noqa: F401  (registers the Auto classes)
from cortex.model import NeuralTreeConfig, NeuralTreeModel

FRESH_PROCESS = """
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel
import cortex
model = AutoModel.from_pretrained(sys.argv[1]).eval()
inputs = load_file(sys.argv[2])
root_inputs = {root: {"input_ids": inputs[root + ".input_ids"], "attention_mask": inputs[root + ".attention_mask"]}
               for root in model.roots}
with torch.no_grad():
    out = model(root_inputs)
tensors = {name + "." + field: value.contiguous() for name, leaf in out.leaf_outputs.items() for field, value in leaf.items()}
tensors["tokens"] = model.tokenize([sys.argv[3]], next(iter(model.roots)))["input_ids"]
save_file(tensors, sys.argv[4])
"""


def _outputs(model, root_inputs):
    with torch.no_grad():
        out = model(root_inputs)
    return {
        f"{name}.{field}": value for name, leaf in out.leaf_outputs.items() for field, value in leaf.items()
    }


def _assert_fresh_process_equal(model, root_inputs, tmp_path):
    save_dir = tmp_path / "saved"
    model.save_pretrained(save_dir)
    assert sorted(os.listdir(save_dir)) == ["config.json", "model.safetensors", "tokenizer"]
    assert sorted(os.listdir(save_dir / "tokenizer")) == sorted(model.roots)
    inputs = {f"{r}.{k}": v.contiguous() for r, d in root_inputs.items() for k, v in d.items()}
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    script = tmp_path / "load.py"
    script.write_text(FRESH_PROCESS)
    result_path = tmp_path / "out.safetensors"
    command = [sys.executable, str(script), str(save_dir), str(tmp_path / "inputs.safetensors"), SEQUENCES[1]]
    subprocess.run(
        [*command, str(result_path)],
        check=True,
        capture_output=True,
        # Same intra-op thread count as this process (earlier tests may have changed it), so reductions run
        # in the same order and the outputs can be compared bit for bit.
        env={**os.environ, "PYTHONHASHSEED": "7", "OMP_NUM_THREADS": str(torch.get_num_threads())},
    )
    from safetensors.torch import load_file

    reloaded = load_file(str(result_path))
    expected = _outputs(model, root_inputs)
    for key, value in expected.items():
        torch.testing.assert_close(reloaded[key], value, rtol=0, atol=0)
    first_root = next(iter(model.roots))
    assert torch.equal(reloaded["tokens"], model.tokenize([SEQUENCES[1]], first_root)["input_ids"])


def test_two_root_three_leaf_tree_round_trip_in_fresh_process(tmp_path):
    torch.manual_seed(1)
    model = NeuralTreeModel(two_root_config()).eval()
    labels = torch.randn(40, 2) * 3 + 5
    model.leaves["expression"].fit_target_standardization(labels)
    inputs = model.tokenize(SEQUENCES, "seq")
    root_inputs = {"seq": inputs, "seq_t": model.tokenize(SEQUENCES, "seq_t")}
    _assert_fresh_process_equal(model, root_inputs, tmp_path)
    reloaded = NeuralTreeModel.from_pretrained(tmp_path / "saved")
    torch.testing.assert_close(
        reloaded.leaves["expression"].target_mean, model.leaves["expression"].target_mean
    )
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "neural_tree"
    assert reloaded.config.to_dict()["leaves"] == model.config.to_dict()["leaves"]


def test_forward_loss_and_leaf_selection():
    torch.manual_seed(2)
    model = NeuralTreeModel(two_root_config())
    seq = model.tokenize(SEQUENCES, "seq")
    root_inputs = {"seq": seq, "seq_t": model.tokenize(SEQUENCES, "seq_t")}
    out = model(root_inputs, leaves=["seq_mlm"])
    assert list(out.leaf_outputs) == ["seq_mlm"] and list(out.branch_outputs) == ["generation"]
    labels = {"expression": torch.randn(3, 2), "binding": torch.tensor([[0.5], [float("nan")], [1.0]])}
    out = model(root_inputs, labels=labels)
    expected = sum(model.leaves[k].loss(out.leaf_outputs[k], v) for k, v in labels.items())
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.roots["seq"].tok_encoder.weight.grad is not None
    # guided forward: a zero offset changes nothing, a non-zero one changes the heads.
    offset = torch.zeros_like(out.trunk_output.last_hidden_state)
    guided = model.guided_forward(root_inputs, offset, ["binding"])
    torch.testing.assert_close(guided.leaf_outputs["binding"].loc, out.leaf_outputs["binding"].loc)
    moved = model.guided_forward(root_inputs, offset + 1.0, ["binding"])
    assert not torch.allclose(moved.leaf_outputs["binding"].loc, out.leaf_outputs["binding"].loc)


def test_antiberty_root_tree_round_trip(tmp_path):
    model_dir, vocab = antiberty_files()
    config = NeuralTreeConfig(
        roots={
            "ab": {
                "type": "hf",
                "pretrained_path": model_dir,
                "tokenizer_path": vocab,
                "space_separated": True,
            }
        },
        trunk={"type": "sum", "roots": ["ab"]},
        branches={"p": {"type": "mlp", "out_dim": 8, "ensemble_size": 2}},
        leaves={
            "y": {"type": "regressor", "branch": "p"},
            "ab_mlm": {"type": "mlm", "branch": "p", "root": "ab"},
        },
    )
    assert config.roots["ab"]["hf_config"]["hidden_size"] == 512
    torch.manual_seed(3)
    model = NeuralTreeModel(config).eval()
    # The pretrained weights are AntiBERTy's, not a fresh init.
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(model_dir, local_files_only=True)
    torch.testing.assert_close(
        model.roots["ab"].get_input_embeddings().weight,
        reference.get_input_embeddings().weight,
        rtol=0,
        atol=0,
    )
    tokenizer = model.get_tokenizer("ab")
    inputs = model.tokenize(["EVQLVESGGG", "QVQLQ"], "ab")
    assert inputs["input_ids"][0].tolist() == tokenizer.convert_tokens_to_ids(list("EVQLVESGGG"))
    assert tokenizer.unk_token_id not in inputs["input_ids"][0].tolist()
    _assert_fresh_process_equal(model, {"ab": inputs}, tmp_path)


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        (["MKTAY", "MKJAY"], r"sequences\[1\] has unknown residue 'J' at position 2"),
        (["MKTAY", ""], r"sequences\[1\] is empty"),
        (["M" * 33], r"33 residues; root 'seq' accepts at most 32"),
    ],
)
def test_bad_sequences_raise(sequences, message):
    model = NeuralTreeModel(two_root_config())
    with pytest.raises(ValueError, match=message):
        model.tokenize(sequences, "seq")


def test_bad_inputs_raise():
    model = NeuralTreeModel(two_root_config())
    seq = model.tokenize(SEQUENCES, "seq")
    with pytest.raises(ValueError, match="exceeds the root's max_length 32"):
        model.roots["seq"](input_ids=torch.full((1, 40), 5))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model.roots["seq"]()
    with pytest.raises(ValueError, match=r"missing roots \['seq_t'\]"):
        model({"seq": seq})
    with pytest.raises(ValueError, match=r"unknown leaves \['nope'\]"):
        model({"seq": seq, "seq_t": seq}, leaves=["nope"])
    with pytest.raises(ValueError, match="name a root"):
        model(input_ids=seq["input_ids"])
    with pytest.raises(ValueError, match="unknown keys"):
        model({"seq": {**seq, "token_type_ids": seq["input_ids"]}, "seq_t": seq})
    with pytest.raises(ValueError, match="regressor labels have shape"):
        model({"seq": seq, "seq_t": seq}, labels={"binding": torch.zeros(3)})
