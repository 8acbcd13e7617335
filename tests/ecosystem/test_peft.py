"""LoRA adapters on native transformer and hf roots: only adapters and heads train, adapters save and load."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.peft import add_lora, count_parameters, default_target_modules, merge_lora
from cortex.trainer import TreeTrainerCollator, fit_tasks, tree_rows

from .helpers import rbd_slice, rbd_tasks, tiny_model


def tiny_bert_model() -> NeuralTreeModel:
    """A random tiny BERT root on the AntiBERTy vocabulary shipped with `antiberty`."""
    import importlib.resources

    vocab = str(importlib.resources.files("antiberty") / "trained_models" / "vocab.txt")
    hf_config = {
        "model_type": "bert", "vocab_size": 25, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 64, "pad_token_id": 0,
    }  # fmt: skip
    return NeuralTreeModel(
        NeuralTreeConfig(
            roots={
                "protein": {
                    "type": "hf",
                    "hf_config": hf_config,
                    "tokenizer_path": vocab,
                    "space_separated": True,
                }
            },
            branches={"property": {"type": "mlp", "out_dim": 8, "hidden_dim": 8}},
            leaves={"expr": {"type": "regressor", "branch": "property"}},
        )
    )


def _batch(model, tasks, rows=16):
    frame = rbd_slice(rows)
    fit_tasks(model, tasks, frame)
    return TreeTrainerCollator(model, tasks)(tree_rows(frame, tasks).to_dict("records"))


@pytest.mark.parametrize(
    "build", [lambda: tiny_model("transformer"), tiny_bert_model], ids=["native", "bert"]
)
def test_only_adapters_and_heads_train(build):
    torch.manual_seed(0)
    model = build()
    tasks = [t for t in rbd_tasks() if t.name == "expr"]
    batch = _batch(model, tasks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    full_trainable, _ = count_parameters(model)
    add_lora(model, r=4)
    trainable, _ = count_parameters(model)
    root_trainable = [n for n, p in model.roots.named_parameters() if p.requires_grad]
    assert root_trainable and all(".lora_" in n for n in root_trainable)
    assert all(p.requires_grad for p in [*model.branches.parameters(), *model.leaves.parameters()])
    assert trainable < full_trainable
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    after = dict(model.named_parameters())
    for name, old in before.items():
        new_name = (
            name
            if name in after
            else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        if name.startswith("roots."):
            torch.testing.assert_close(after[new_name], old, msg=f"frozen root weight {name} changed")
    lora_b = [p for n, p in model.roots.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: the adapters did learn


def test_adapters_save_and_load_with_the_model_in_a_fresh_process(tmp_path):
    torch.manual_seed(0)
    model = tiny_model("transformer")
    add_lora(model, r=2)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)  # non-zero adapters, so the round trip is visible
    model.eval()
    inputs = model.tokenize(["NITNLCPFGEVF", "NITN"])
    expected = model(**inputs).leaf_outputs["expr"].loc
    model.save_pretrained(tmp_path)
    assert model.config.lora_adapters["protein"]["target_modules"] == ["c_attn", "c_proj"]
    torch.save({"inputs": dict(inputs), "expected": expected.detach()}, tmp_path / "reference.pt")
    code = (
        "import sys, torch; from cortex.model import NeuralTreeModel; d = sys.argv[1];"
        "m = NeuralTreeModel.from_pretrained(d).eval(); ref = torch.load(d + '/reference.pt');"
        "torch.testing.assert_close(m(**ref['inputs']).leaf_outputs['expr'].loc, ref['expected']);"
        "names = [n for n, p in m.named_parameters() if p.requires_grad and n.startswith('roots.')];"
        "assert names and all('lora_' in n for n in names), names"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    merge_lora(model)
    assert not [n for n, _ in model.named_parameters() if "lora_" in n]
    torch.testing.assert_close(model(**inputs).leaf_outputs["expr"].loc, expected, rtol=1e-5, atol=1e-5)


def test_default_targets_and_errors():
    assert default_target_modules(tiny_bert_model(), "protein") == ["query", "value"]
    conv = tiny_model("conv1d")
    with pytest.raises(ValueError, match=r"type 'conv1d' has no default LoRA targets"):
        default_target_modules(conv, "protein")
    with pytest.raises(ValueError, match=r"no root of \['protein'\] has default LoRA targets"):
        add_lora(conv)
    with pytest.raises(ValueError, match=r"no modules named \['attention'\]"):
        add_lora(conv, ["protein"], target_modules=["attention"])
    add_lora(conv, ["protein"], target_modules=["conv_1"])  # explicit targets work on conv roots
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(conv, ["protein"], target_modules=["conv_1"])
    with pytest.raises(ValueError, match=r"unknown root 'heavy'"):
        add_lora(tiny_model("transformer"), ["heavy"])
