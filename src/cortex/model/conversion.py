"""Checkpoint conversion from the original cortex (prescient-design/cortex `main`, spec appendix B).

The original saves a plain state dict (`torch.save(model.state_dict())`) and its resolved Hydra config. Its keys:
`root_nodes.<root>.`, `trunk_node.`, `branch_nodes.<group>_<i>.` (one branch instance per ensemble member i) and
`leaf_nodes.<task>_<i>.` (one leaf per task and member). Here an ensemble is a tensor dimension: member i of a
branch is `branches.<group>.members.<i>.` and of a leaf `leaves.<task>.members.<i>.`.

Everything is derived from the v1 config (`roots`, `trunk`, `branches`, `tasks.<group>.<task>` with
`ensemble_size`) and the state dict (leaf head depth, LayerNorm presence, last-layer bias): nothing is assumed
about particular trees. Converted models keep the original numerics through the config fields
`block="cortex_v1"` (A1), `mask_padding_in_attention=False` (A2) and `mask_block_input=False` (A4); LayerNorm of
conv blocks (A3), normalised embeddings (A6) and the trainable position table (A5) are the only behaviour here.

    config, state_dict = convert_v1_state_dict(v1_state_dict, "train_protein_model.yaml")
    model = convert_v1_checkpoint(v1_state_dict, v1_config)   # a NeuralTreeModel in eval mode

Malformed inputs raise ValueError naming the key: a config that is not an original one, an unsupported node type,
missing or unexpected state-dict keys, shape mismatches, or ensemble members whose standardisers disagree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from cortex.model.configuration_neural_tree import NeuralTreeConfig
from cortex.model.modeling_neural_tree import NeuralTreeModel

# Original class name (last component of `_target_`) -> node type here.
V1_ROOT_TYPES: dict[str, str] = {"Conv1dRoot": "conv1d", "TransformerRoot": "transformer"}
V1_BRANCH_TYPES: dict[str, str] = {"Conv1dBranch": "conv1d", "TransformerBranch": "transformer"}
V1_TASK_LEAF_TYPES: dict[str, str] = {
    "RegressionTask": "regressor",
    "ClassificationTask": "classifier",
    "DenoisingLanguageModelTask": "mlm",
    "AutoregressiveLanguageModelTask": "causal_lm",
}
V1_TOKENIZERS: dict[str, str] = {"ProteinSequenceTokenizerFast": "protein"}

# Constructor defaults of the original nodes (spec 2.2, 2.3, 2.6, 3.1), with this project's field names.
V1_ROOT_DEFAULTS: dict[str, dict[str, Any]] = {
    "conv1d": {
        "embed_dim": 64,
        "channel_dim": 256,
        "out_dim": 64,
        "num_blocks": 2,
        "kernel_size": 5,
        "dilation": 1,
        "layernorm": True,
        "dropout": 0.0,
        "pos_encoding": True,
    },
    "transformer": {
        "embed_dim": 64,
        "channel_dim": 256,
        "out_dim": 64,
        "num_blocks": 2,
        "num_heads": 4,
        "is_causal": False,
        "dropout": 0.0,
        "pos_encoding": True,
    },
}
V1_BRANCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "conv1d": {
        "out_dim": 64,
        "channel_dim": 64,
        "num_blocks": 2,
        "kernel_size": 5,
        "dropout": 0.0,
        "layernorm": True,
        "pooling": "mean",
    },
    "transformer": {
        "out_dim": 64,
        "channel_dim": 64,
        "num_blocks": 2,
        "num_heads": 4,
        "is_causal": False,
        "dropout": 0.0,
        "pooling": "mean",
    },
}
# Original keys renamed here; every other key of a node keeps its name.
V1_RENAMED_FIELDS: dict[str, str] = {
    "max_len": "max_length",
    "dropout_prob": "dropout",
    "pooling_type": "pooling",
}
# Original keys that configure training or data, not the architecture (they move to the training config).
V1_NON_ARCHITECTURE_FIELDS: frozenset[str] = frozenset(
    {
        "_target_",
        "corruption_process",
        "tokenizer_transform",
        "train_transforms",
        "eval_transforms",
        "in_dim",
        "in_dims",
        "device",
        "dtype",
    }
)
# Flags that reproduce the original's numerics (docs/migrating.md lists each quirk and its decision).
V1_ROOT_FLAGS: dict[str, dict[str, Any]] = {
    "conv1d": {"mask_block_input": False, "normalize_embeddings": True},
    "transformer": {"block": "cortex_v1", "mask_padding_in_attention": False, "normalize_embeddings": True},
}
V1_BRANCH_FLAGS: dict[str, dict[str, Any]] = {
    "conv1d": {"mask_block_input": False},
    "transformer": {"block": "cortex_v1", "mask_padding_in_attention": False},
}
V1_POOLINGS: dict[str, tuple[str, ...]] = {
    "conv1d": ("mean", "weighted_mean"),
    "transformer": ("mean", "weighted_mean", "attention"),
}
# DDPStandardize entries of a regressor leaf (spec 3.4).
OUTCOME_TRANSFORM_KEYS: tuple[str, ...] = ("means", "stdvs", "_stdvs_sq", "_is_trained")


@dataclass
class V1TreeLayout:
    """How the original's modules map onto this project's: `config` plus, per branch here, the original group
    whose instances `<group>_<i>` are its members, and notes on every non-architecture or ignored key."""

    config: NeuralTreeConfig
    branch_groups: dict[str, str] = field(default_factory=dict)
    root_types: dict[str, str] = field(default_factory=dict)
    branch_types: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_v1_config(v1_config: Any) -> dict[str, Any]:
    """An original config (YAML path, DictConfig or mapping) as a plain dict with the interpolations of the
    architecture sections resolved. Raises ValueError when it is not an original cortex config."""
    if isinstance(v1_config, str | os.PathLike):
        if not os.path.isfile(v1_config):
            raise ValueError(f"original config {os.fspath(v1_config)!r} is not a file")
        v1_config = OmegaConf.load(v1_config)
    if isinstance(v1_config, Mapping) and not isinstance(v1_config, DictConfig):
        v1_config = OmegaConf.create(dict(v1_config))
    if not isinstance(v1_config, DictConfig):
        raise ValueError(f"original config must be a YAML path or a mapping; got {type(v1_config).__name__}")
    for key in ("roots", "tasks"):
        if key not in v1_config or not isinstance(v1_config[key], DictConfig):
            raise ValueError(
                f"not an original cortex config: key {key!r} is missing or not a mapping (expected the layout "
                "of spec section 9: roots, trunk, branches, tasks.<group>.<task>)"
            )
    resolved = {}
    for key in ("roots", "trunk", "branches", "tasks"):
        node = v1_config.get(key)
        resolved[key] = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node
        )
    for name, root in resolved["roots"].items():
        if isinstance(root, Mapping) and "type" in root and "_target_" not in root:
            raise ValueError(
                f"not an original cortex config: roots.{name} has 'type' and no '_target_' (this project's "
                "layout); original roots name their class in '_target_'"
            )
    return resolved


def _class_name(node: Any, where: str, table: Mapping[str, str]) -> str:
    """The original class a node instantiates (last component of `_target_`), checked against `table`."""
    if not isinstance(node, Mapping):
        raise ValueError(f"{where} must be a mapping with '_target_'; got {node!r}")
    target = node.get("_target_")
    if not isinstance(target, str) or not target.startswith("cortex."):
        raise ValueError(
            f"{where}._target_={target!r}; expected an original cortex class, one of "
            f"{sorted(table)} (e.g. cortex.model.root.Conv1dRoot)"
        )
    name = target.rsplit(".", 1)[1]
    if name not in table:
        raise ValueError(f"{where}._target_={target!r} is not convertible; expected one of {sorted(table)}")
    return name


def _node_fields(
    node: Mapping[str, Any],
    where: str,
    defaults: Mapping[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    """Original node keys -> this project's fields (renamed, defaults filled); ignored keys noted (A25)."""
    fields = dict(defaults)
    for key, value in node.items():
        name = V1_RENAMED_FIELDS.get(key, key)
        if key in V1_NON_ARCHITECTURE_FIELDS:
            continue
        if name in defaults or name == "max_length":
            fields[name] = value
        else:
            notes.append(f"{where}.{key}: ignored (the original ignores it too, spec A25)")
    return fields


def _tokenizer_name(root: Mapping[str, Any], where: str) -> str:
    tokenizer = (root.get("tokenizer_transform") or {}).get("tokenizer") or {}
    target = tokenizer.get("_target_") if isinstance(tokenizer, Mapping) else None
    name = target.rsplit(".", 1)[1] if isinstance(target, str) else None
    if name not in V1_TOKENIZERS:
        raise ValueError(
            f"{where}.tokenizer_transform.tokenizer._target_={target!r}; expected one of {sorted(V1_TOKENIZERS)} "
            "(the original's protein tokenizer)"
        )
    if tokenizer.get("vocab_file") is not None:
        raise ValueError(
            f"{where}.tokenizer_transform.tokenizer.vocab_file={tokenizer['vocab_file']!r}; only the bundled "
            "32-token protein vocabulary is convertible"
        )
    return V1_TOKENIZERS[name]


def _ensemble_size(task: Mapping[str, Any], where: str) -> int:
    size = task.get("ensemble_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(
            f"{where}.ensemble_size={size!r}; expected a positive integer (build_tree requires it)"
        )
    return size


def _leaf_head(state_dict: Mapping[str, torch.Tensor] | None, prefix: str) -> dict[str, Any] | None:
    """Head layout of an original leaf from its `encoder.<k>` tensors: layernorm, num_layers, last-layer bias."""
    if state_dict is None:
        return None
    weights = {}
    for key, value in state_dict.items():
        if key.startswith(prefix + "encoder.") and key.endswith(".weight"):
            index = key[len(prefix + "encoder.") : -len(".weight")]
            if index.isdigit():
                weights[int(index)] = value
    if not weights:
        raise ValueError(f"state dict has no key {prefix}encoder.<k>.weight; expected the leaf's head")
    layernorm = weights[min(weights)].dim() == 1
    linears = sorted(k for k, w in weights.items() if w.dim() == 2)
    last = linears[-1]
    return {
        "layernorm": layernorm,
        "num_layers": len(linears) - 1,
        "last_layer_bias": f"{prefix}encoder.{last}.bias" in state_dict,
        "out_features": weights[last].shape[0],
    }


def v1_tree_layout(v1_config: Any, state_dict: Mapping[str, torch.Tensor] | None = None) -> V1TreeLayout:
    """NeuralTreeConfig (with the original-numerics flags) of an original config; leaf head depth, LayerNorm and
    last-layer bias come from `state_dict` when given (else the original's task defaults)."""
    cfg = load_v1_config(v1_config)
    notes: list[str] = []
    roots: dict[str, dict[str, Any]] = {}
    root_types: dict[str, str] = {}
    for name, root in cfg["roots"].items():
        where = f"roots.{name}"
        root_type = V1_ROOT_TYPES[_class_name(root, where, V1_ROOT_TYPES)]
        fields = _node_fields(root, where, V1_ROOT_DEFAULTS[root_type], notes)
        if "max_length" not in fields:
            raise ValueError(f"{where}.max_len is missing; the original requires it")
        if fields["num_blocks"] < 1:
            raise ValueError(
                f"{where}.num_blocks={fields['num_blocks']}; the original root builds no embedding for 0 "
                "(spec 2.2 [BUG]); expected >= 1"
            )
        roots[name] = {"type": root_type, "tokenizer": _tokenizer_name(root, where), **fields}
        roots[name].update(V1_ROOT_FLAGS[root_type])
        root_types[name] = root_type
    trunk_node = cfg.get("trunk") or {"_target_": "cortex.model.trunk.SumTrunk"}
    _class_name(trunk_node, "trunk", {"SumTrunk": "sum"})
    widths = [roots[name]["out_dim"] for name in roots]
    trunk_out = trunk_node.get("out_dim") or max(widths)
    project = bool(trunk_node.get("project_features", False))
    if not project and len(set([*widths, trunk_out])) > 1:
        raise ValueError(
            f"trunk: SumTrunk without project_features needs equal root widths and out_dim; got roots "
            f"{dict(zip(roots, widths))}, out_dim {trunk_out} (the original cannot run this tree either)"
        )
    trunk = {"type": "sum", "roots": list(roots), "out_dim": trunk_out, "project": True}

    branches: dict[str, dict[str, Any]] = {}
    branch_groups: dict[str, str] = {}
    branch_types: dict[str, str] = {}
    leaves: dict[str, dict[str, Any]] = {}
    branch_cfgs = cfg.get("branches") or {}
    for group, tasks in cfg["tasks"].items():
        if not isinstance(tasks, Mapping):
            raise ValueError(f"tasks.{group} must map task keys to task configs; got {tasks!r}")
        if group not in branch_cfgs:
            raise ValueError(
                f"tasks.{group}: no branch config branches.{group}; the first level under tasks is the branch "
                f"group (branches are {sorted(branch_cfgs)})"
            )
        where = f"branches.{group}"
        branch_type = V1_BRANCH_TYPES[_class_name(branch_cfgs[group], where, V1_BRANCH_TYPES)]
        fields = _node_fields(branch_cfgs[group], where, V1_BRANCH_DEFAULTS[branch_type], notes)
        if fields["pooling"] not in V1_POOLINGS[branch_type]:
            raise ValueError(
                f"{where}.pooling_type={fields['pooling']!r}; the original {branch_type} branch supports "
                f"{V1_POOLINGS[branch_type]}"
            )
        if fields["num_blocks"] < 0:
            raise ValueError(f"{where}.num_blocks={fields['num_blocks']}; expected >= 0")
        fields.update(V1_BRANCH_FLAGS[branch_type])
        if branch_type == "transformer":
            fields["num_pooling_heads"] = fields["num_heads"]  # PoolingSelfAttention(num_heads, out_dim)
        sizes = {task: _ensemble_size(t, f"tasks.{group}.{task}") for task, t in tasks.items()}
        largest = max(sizes.values(), default=1)
        for size in sorted(set(sizes.values()), reverse=True):
            # Tasks of one group share branch instance i; a smaller ensemble uses instances 0..size-1, which
            # here is a separate branch holding copies of those members (equal outputs, untied in training).
            name = group if size == largest else f"{group}_ensemble{size}"
            if name in branches or (name != group and name in branch_cfgs):
                raise ValueError(f"{where}: derived branch name {name!r} collides with another branch")
            branches[name] = {"type": branch_type, **fields, "ensemble_size": size}
            branch_groups[name] = group
            branch_types[name] = branch_type
            if name != group:
                notes.append(
                    f"tasks.{group}: tasks with ensemble_size {size} get branch {name!r}, a copy of members "
                    f"0..{size - 1} of {group!r} (tied in the original, trained separately here)"
                )
        for task_key, task in tasks.items():
            task_where = f"tasks.{group}.{task_key}"
            leaf_type = V1_TASK_LEAF_TYPES[_class_name(task, task_where, V1_TASK_LEAF_TYPES)]
            if task_key in leaves:
                raise ValueError(f"{task_where}: task key {task_key!r} repeats in another group")
            branch = group if sizes[task_key] == largest else f"{group}_ensemble{sizes[task_key]}"
            head = _leaf_head(state_dict, f"leaf_nodes.{task_key}_0.")
            leaves[task_key] = _leaf_config(leaf_type, task, task_where, branch, roots, head)
    config = NeuralTreeConfig(roots=roots, trunk=trunk, branches=branches, leaves=leaves)
    return V1TreeLayout(config, branch_groups, root_types, branch_types, notes)


def _leaf_config(
    leaf_type: str,
    task: Mapping[str, Any],
    where: str,
    branch: str,
    roots: Mapping[str, Any],
    head: dict[str, Any] | None,
) -> dict[str, Any]:
    """Leaf node dict of one original task (spec 8.6 create_leaf), checked against its head when given."""
    leaf: dict[str, Any] = {"type": leaf_type, "branch": branch}
    if head is not None:
        leaf["num_layers"] = head["num_layers"]
    if leaf_type == "regressor":
        outcome_cols = task.get("outcome_cols")
        if not isinstance(outcome_cols, list) or not outcome_cols:
            raise ValueError(f"{where}.outcome_cols={outcome_cols!r}; expected a non-empty list of columns")
        leaf["out_dim"] = len(outcome_cols)
        leaf["nominal_label_var"] = float(task.get("nominal_label_var", 0.0625))
        if head is not None and head["out_features"] != 2 * len(outcome_cols):
            raise ValueError(
                f"{where}: head has {head['out_features']} outputs; expected 2 x {len(outcome_cols)} outcome_cols"
            )
    elif leaf_type == "classifier":
        num_classes = task.get("num_classes")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"{where}.num_classes={num_classes!r}; expected a positive integer")
        leaf["num_classes"] = num_classes
        leaf["layernorm"] = head["layernorm"] if head is not None else False
        leaf["last_layer_bias"] = head["last_layer_bias"] if head is not None else True
    else:
        root = task.get("root_key")
        if root not in roots:
            raise ValueError(f"{where}.root_key={root!r}; expected one of the roots {sorted(roots)}")
        leaf["root"] = root
        leaf["layernorm"] = head["layernorm"] if head is not None else True
        if head is not None and not head["last_layer_bias"]:
            raise ValueError(f"{where}: language-model head without a last-layer bias is not convertible")
    return leaf


# ---- state dict ----------------------------------------------------------------------------------------------


def _transformer_suffix(rest: str) -> str:
    """TransformerBlock keys here -> original: the MLP's Sequential is `mlp.net.<k>` here, `mlp.<k>` there."""
    return rest.replace("mlp.net.", "mlp.", 1)


def _branch_member_key(rest: str, branch_type: str) -> str:
    """Key inside one branch member here -> inside the original branch instance (spec appendix B)."""
    if rest.startswith("encoder."):
        index, _, tail = rest[len("encoder.") :].partition(".")
        if branch_type == "conv1d":
            return f"encoder.{int(index) + 1}.{tail}"  # index 0 is the original's permute Apply
        return f"encoder.{index}.{_transformer_suffix(tail)}"
    if rest.startswith("projection."):
        return "encoder.0.module." + rest[len("projection.") :]  # num_blocks = 0: Apply(Linear)
    pooling = {
        "pooling.encoder.": "pooling_op.encoder.",
        "pooling.norm.": "pooling_op.0.module.",
        "pooling.c_attn.": "pooling_op.1.c_attn.",
        "pooling.c_proj.": "pooling_op.1.c_proj.",
    }
    for here, there in pooling.items():
        if rest.startswith(here):
            return there + rest[len(here) :]
    raise ValueError(f"no original key for branch parameter {rest!r}")


def _v1_key(key: str, layout: V1TreeLayout) -> str | None:
    """The original state-dict key holding this project's `key`; None for keys the original does not have."""
    kind, name, rest = key.split(".", 2)
    if kind == "roots":
        if rest == "corruptible_token_mask":
            return None  # derived from the tokenizer
        if rest.startswith("encoder."):
            index, _, tail = rest[len("encoder.") :].partition(".")
            if layout.root_types[name] == "conv1d":
                return f"root_nodes.{name}.encoder.{int(index) + 1}.{tail}"
            return f"root_nodes.{name}.encoder.{index}.{_transformer_suffix(tail)}"
        return f"root_nodes.{name}.{rest}"
    if kind == "trunk":
        return f"trunk_node.{name}.{rest}"
    if kind == "branches":
        _, member, member_rest = rest.split(".", 2)
        group = layout.branch_groups[name]
        return f"branch_nodes.{group}_{member}.{_branch_member_key(member_rest, layout.branch_types[name])}"
    if kind == "leaves":
        if rest in ("target_mean", "target_std"):
            return None  # from the members' outcome_transform (checked in _standardisation)
        _, member, member_rest = rest.split(".", 2)
        return f"leaf_nodes.{name}_{member}.encoder.{member_rest}"
    raise ValueError(f"no original key for parameter {key!r}")


def _standardisation(
    state_dict: Mapping[str, torch.Tensor], leaf: str, ensemble_size: int, out_dim: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(target_mean (T,), target_std (T,), keys used) from the members' DDPStandardize entries (spec 3.4). An
    untrained standardiser (`_is_trained` 0) leaves predictions in standardised units: mean 0, std 1."""
    used, values = [], []
    for member in range(ensemble_size):
        prefix = f"leaf_nodes.{leaf}_{member}.outcome_transform."
        for name in ("means", "stdvs"):
            if prefix + name not in state_dict:
                raise ValueError(
                    f"state dict is missing key {prefix + name!r} (the regressor's standardiser)"
                )
        means = state_dict[prefix + "means"].reshape(-1).float()
        stdvs = state_dict[prefix + "stdvs"].reshape(-1).float()
        for name, value in (("means", means), ("stdvs", stdvs)):
            if value.shape != (out_dim,):
                raise ValueError(
                    f"state dict key {prefix + name!r} has {value.numel()} values; expected {out_dim} "
                    "(one per outcome column)"
                )
        trained = prefix + "_is_trained" not in state_dict or bool(state_dict[prefix + "_is_trained"] != 0)
        if not trained:
            means, stdvs = torch.zeros_like(means), torch.ones_like(stdvs)
        values.append((means, stdvs))
        used += [prefix + name for name in OUTCOME_TRANSFORM_KEYS if prefix + name in state_dict]
    for member, (means, stdvs) in enumerate(values[1:], start=1):
        if not (torch.allclose(means, values[0][0]) and torch.allclose(stdvs, values[0][1])):
            raise ValueError(
                f"leaf_nodes.{leaf}_{member}.outcome_transform differs from leaf_nodes.{leaf}_0's; members of "
                "one leaf share one standardisation here"
            )
    return values[0][0], values[0][1], used


def convert_v1_state_dict(
    state_dict: Mapping[str, torch.Tensor], v1_config: Any
) -> tuple[NeuralTreeConfig, dict[str, torch.Tensor]]:
    """(NeuralTreeConfig, state dict of NeuralTreeModel) of an original state dict and its config.

    Raises ValueError naming the key for a missing or unexpected key or a shape mismatch.
    """
    layout = v1_tree_layout(v1_config, state_dict)
    with torch.device("meta"):
        template = NeuralTreeModel(layout.config).state_dict()
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for key, target in template.items():
        source = _v1_key(key, layout)
        if source is None:
            continue
        if source not in state_dict:
            missing.append(f"{source} (for {key})")
            continue
        value = state_dict[source]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(
                f"state dict key {source!r} has shape {tuple(value.shape)}; expected {tuple(target.shape)} "
                f"(for {key}, from the config)"
            )
        converted[key] = value.detach().to(target.dtype).clone()
        used.add(source)
    if missing:
        raise ValueError(f"state dict is missing key(s) {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    for name, leaf in layout.config.leaf_configs.items():
        if layout.config.leaves[name]["type"] == "regressor":
            size = layout.config.branch_configs[leaf.branch].ensemble_size
            mean, std, keys = _standardisation(state_dict, name, size, leaf.out_dim)
            converted[f"leaves.{name}.target_mean"] = mean
            converted[f"leaves.{name}.target_std"] = std
            used.update(keys)
    unexpected = [key for key in state_dict if key not in used]
    if unexpected:
        raise ValueError(
            f"state dict has unexpected key(s) {unexpected[:5]}"
            + (" ..." if len(unexpected) > 5 else "")
            + "; expected only the nodes of the config's roots, trunk, branches and tasks"
        )
    return layout.config, converted


def convert_v1_checkpoint(state_dict: Mapping[str, torch.Tensor], v1_config: Any) -> NeuralTreeModel:
    """NeuralTreeModel (eval mode) holding an original checkpoint; see `convert_v1_state_dict`."""
    config, converted = convert_v1_state_dict(state_dict, v1_config)
    model = NeuralTreeModel(config)
    reference = model.state_dict()
    for key in reference:
        if key not in converted:
            converted[key] = reference[key]  # buffers derived from the tokenizer
    model.load_state_dict(converted, strict=True)
    return model.eval()


def load_v1_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An original state dict from `.safetensors`, or a torch file (`.pt`/`.pth`/`.ckpt`) loaded with
    weights_only=True (a Lightning checkpoint's `state_dict` entry is used)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"state dict {path!r} is not a file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path!r} does not hold a state dict (a mapping of key -> tensor)")
    # torch.compile'd originals save `_orig_mod.` keys (spec A26).
    return {key.replace("_orig_mod.", "", 1): value for key, value in loaded.items()}


__all__ = [
    "V1TreeLayout",
    "convert_v1_checkpoint",
    "convert_v1_state_dict",
    "load_v1_config",
    "load_v1_state_dict",
    "v1_tree_layout",
]
