"""Converted original trees (tests/parity/tiny_tree*) reproduce every recorded node output of the original.

Each fixture is an original state dict + its Hydra config; `convert_v1_checkpoint` turns it into a
NeuralTreeModel, which is fed the recorded token ids. Node names come from the config (tasks.<group>.<task> with
ensemble_size), never from the fixture's file names, so other trees (held-out set) run unchanged.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cortex.corruption import MaskCorruption
from cortex.model.conversion import convert_v1_checkpoint, load_v1_config, v1_tree_layout
from cortex.model.roots import IdentityCorruption

pytestmark = pytest.mark.parity

HERE = Path(__file__).parent
TREES = sorted(p.name[: -len("_state_dict.safetensors")] for p in HERE.glob("*_state_dict.safetensors"))
TOL = {"atol": 1e-5, "rtol": 1e-5}


class Tree:
    """A fixture tree: converted model, recorded tensors, metadata and the original -> here node names."""

    def __init__(self, name: str):
        self.meta = json.loads((HERE / f"{name}.json").read_text())
        self.tensors = load_file(HERE / f"{name}.safetensors")
        config_path = HERE / f"{name}_config.yaml"
        self.model = convert_v1_checkpoint(load_file(HERE / f"{name}_state_dict.safetensors"), config_path)
        v1 = load_v1_config(config_path)
        layout = v1_tree_layout(config_path)
        self.roots = list(v1["roots"])
        # original leaf key "<task>_<i>" -> (leaf here, member i), from the config's tasks and ensemble sizes
        self.leaves = {
            f"{task}_{i}": (task, i)
            for tasks in v1["tasks"].values()
            for task, task_cfg in tasks.items()
            for i in range(task_cfg["ensemble_size"])
        }
        self.branches = {
            f"{layout.branch_groups[name]}_{i}": (name, i)
            for name, branch in layout.config.branch_configs.items()
            for i in range(branch.ensemble_size)
        }
        self.leaf_types = {name: node["type"] for name, node in self.model.config.leaves.items()}

    def tags(self) -> list[str]:
        """Recorded forwards with their own (masked or truncated) token ids."""
        return sorted({k.split(".")[0] for k in self.tensors if k.endswith(".root.src_tok_idxs")})

    def forward(self, input_ids: torch.Tensor):
        with torch.no_grad():
            return self.model({root: {"input_ids": input_ids} for root in self.roots})


@pytest.fixture(scope="module", params=TREES)
def tree(request) -> Tree:
    return Tree(request.param)


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual.to(expected.dtype), expected, **TOL, msg=lambda m: f"{what}: {m}")


def _check_leaves(tree: Tree, output, tag: str) -> int:
    checked = 0
    for v1_key, (leaf, member) in tree.leaves.items():
        prefix = f"{tag}.leaf.{v1_key}."
        out = output.leaf_outputs[leaf]
        kind = tree.leaf_types[leaf]
        if kind == "regressor" and prefix + "loc" in tree.tensors:
            _close(out.loc[member], tree.tensors[prefix + "loc"], prefix + "loc")
            _close(out.scale[member], tree.tensors[prefix + "scale"], prefix + "scale")
            canon = torch.stack([out.eta1[member], out.eta2[member]])
            _close(canon, tree.tensors[prefix + "canon_param"], prefix + "canon_param")
            checked += 1
        elif prefix + "logits" in tree.tensors:
            _close(out.logits[member], tree.tensors[prefix + "logits"], prefix + "logits")
            checked += 1
    return checked


def test_clean_forward_matches_every_node(tree):
    ids = tree.tensors["clean.root.tgt_tok_idxs"]
    output = tree.forward(ids)
    for root in tree.roots:
        root_out = output.root_outputs[root]
        _close(root_out.last_hidden_state, tree.tensors["clean.root.root_features"], "root features")
        _close(root_out.inputs_embeds, tree.tensors["clean.root.src_tok_embs"], "root src_tok_embs")
        assert torch.equal(root_out.attention_mask.bool(), tree.tensors["clean.root.padding_mask"])
    _close(output.trunk_output.last_hidden_state, tree.tensors["clean.trunk.trunk_features"], "trunk")
    assert torch.equal(output.trunk_output.attention_mask, tree.tensors["clean.trunk.padding_mask"])
    for v1_key, (branch, member) in tree.branches.items():
        prefix = f"clean.branch.{v1_key}."
        branch_out = output.branch_outputs[branch]
        _close(branch_out.last_hidden_state[member], tree.tensors[prefix + "branch_features"], prefix)
        _close(branch_out.pooled[member], tree.tensors[prefix + "pooled_features"], prefix + "pooled")
    assert _check_leaves(tree, output, "clean") == len(tree.leaves)


def test_masked_and_truncated_forwards_match(tree):
    tags = [tag for tag in tree.tags() if tag != "clean"]
    assert tags, "expected recorded masked forwards"
    for tag in tags:
        output = tree.forward(tree.tensors[f"{tag}.root.src_tok_idxs"])
        if f"{tag}.root.root_features" in tree.tensors:
            _close(
                output.root_outputs[tree.roots[0]].last_hidden_state,
                tree.tensors[f"{tag}.root.root_features"],
                f"{tag} root",
            )
        for v1_key, (branch, member) in tree.branches.items():
            key = f"{tag}.branch.{v1_key}.pooled_features"
            _close(output.branch_outputs[branch].pooled[member], tree.tensors[key], key)
        assert _check_leaves(tree, output, tag) > 0


def test_recorded_losses_match(tree):
    """Regressor: label smoothing by the recorded per-example corrupt fraction; MLM: CE at corrupted positions."""
    for tag in tree.tags():
        output = tree.forward(tree.tensors[f"{tag}.root.src_tok_idxs"])
        alpha = tree.tensors[f"{tag}.root.corrupt_frac"]
        for v1_key, (leaf, member) in tree.leaves.items():
            key = f"{tag}.loss.{v1_key}"
            if key not in tree.tensors:
                continue
            out = output.leaf_outputs[leaf]
            module = tree.model.leaves[leaf]
            if tree.leaf_types[leaf] == "regressor":
                member_out = type(out)(**{k: v[member : member + 1] for k, v in out.items()})
                loss = module.loss(member_out, tree.tensors["targets"], label_smoothing=alpha)
            else:
                member_out = type(out)(logits=out.logits[member : member + 1])
                loss = module.loss(
                    member_out,
                    tree.tensors[f"{tag}.root.tgt_tok_idxs"],
                    tree.tensors[f"{tag}.root.is_corrupted"],
                )
            _close(loss, tree.tensors[key], key)


def test_predict_equivalent_outputs(tree):
    """The original's predict(): property leaves on clean inputs, then LM leaves at corrupt_frac 0.5 (one float64
    uniform draw per position, reproduced by MaskCorruption under the same seed)."""
    seed = int(re.search(r"manual_seed\((\d+)\)", tree.meta["outputs"]["predict.*"]).group(1))
    ids = tree.tensors["clean.root.tgt_tok_idxs"]
    torch.manual_seed(seed)
    clean = tree.forward(ids)
    property_tasks = [leaf for leaf, kind in tree.leaf_types.items() if kind in ("regressor", "classifier")]
    for task in property_tasks:
        out = clean.leaf_outputs[task]
        if tree.leaf_types[task] == "regressor":
            _close(out.loc, tree.tensors[f"predict.{task}_mean"], f"predict.{task}_mean")
            _close(out.scale, tree.tensors[f"predict.{task}_st_dev"], f"predict.{task}_st_dev")
        else:
            _close(out.logits.softmax(-1), tree.tensors[f"predict.{task}_class_probs"], task)
    lm_tasks = [leaf for leaf, kind in tree.leaf_types.items() if kind == "mlm"]
    if not lm_tasks:
        return
    mask_id = tree.model.get_tokenizer(tree.roots[0]).mask_token_id
    tree.model.attach_corruption({root: MaskCorruption(mask_id) for root in tree.roots})
    try:
        level = torch.full((ids.shape[0],), 0.5, dtype=torch.float64)
        with torch.no_grad():
            noisy = tree.model({root: {"input_ids": ids, "noise_level": level} for root in tree.roots})
    finally:
        tree.model.attach_corruption({root: IdentityCorruption() for root in tree.roots})
    for task in lm_tasks:
        is_corrupted = noisy.root_outputs[tree.model.config.leaf_configs[task].root].is_corrupted
        logits = noisy.leaf_outputs[task].logits[:, is_corrupted]  # (E, N, V)
        targets = ids[is_corrupted].expand(logits.shape[0], -1)
        assert torch.equal(targets, tree.tensors[f"predict.{task}_targets"])
        _close(logits, tree.tensors[f"predict.{task}_logits"], f"predict.{task}_logits")
