"""LoRA adapters on tree roots through `peft` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models"): the root's weights are frozen, low-rank adapters are added to its attention projections, and the
trunk, branches and leaves (the heads) stay trainable.

The adapters are part of the architecture: `add_lora` records them in `config.lora_adapters` (root name -> LoRA
settings), so `save_pretrained` writes the adapter weights into model.safetensors with the rest of the tree and
`NeuralTreeModel.from_pretrained` (which calls `inject_lora` while building) restores them. `merge_lora` folds
them into the root weights and returns a plain tree.

Default target modules per root type (`default_target_modules`): native transformer roots: the attention's
fused input and output projections (`c_attn`, `c_proj`); hf roots: the query and value projections of
BERT-like encoders (peft's table for other model types). Conv1d roots have no default: name the modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from transformers.utils import is_peft_available

# model_type -> modules adapted by default (LoRA paper section 7.1: query and value suffice).
HF_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "bert": ("query", "value"),
    "esm": ("query", "value"),
    "roberta": ("query", "value"),
}
NATIVE_TARGET_MODULES: dict[str, tuple[str, ...]] = {"transformer": ("c_attn", "c_proj")}
LORA_FIELDS: tuple[str, ...] = ("r", "lora_alpha", "lora_dropout", "target_modules")


def default_target_modules(model: Any, root: str) -> list[str]:
    """Module names adapted in `root` by default (see the module docstring); ValueError when there are none."""
    node = model.config.roots[root]
    root_type = node["type"]
    if root_type == "hf":
        model_type = node["hf_config"]["model_type"]
        if model_type in HF_TARGET_MODULES:
            return list(HF_TARGET_MODULES[model_type])
        if is_peft_available():
            from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TABLE
        else:
            raise ImportError("LoRA needs peft: pip install peft")
        if model_type in PEFT_TABLE:
            return list(PEFT_TABLE[model_type])
        raise ValueError(
            f"root {root!r} is an hf {model_type!r} model with no default LoRA targets; pass target_modules"
        )
    if root_type in NATIVE_TARGET_MODULES:
        return list(NATIVE_TARGET_MODULES[root_type])
    raise ValueError(
        f"root {root!r} of type {root_type!r} has no default LoRA targets (defaults exist for "
        f"{sorted(NATIVE_TARGET_MODULES)} and hf roots); pass target_modules, e.g. ['conv_1', 'conv_2']"
    )


def add_lora(
    model: Any,
    roots: Sequence[str] | None = None,
    *,
    r: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> None:
    """Adds LoRA adapters (rank `r`, scale lora_alpha / r) to `roots` (default: every root with default
    targets) of a `NeuralTreeModel` in place, freezes those roots' other weights, and records the adapters in
    `model.config.lora_adapters` so that they save and load with the model."""
    existing = dict(getattr(model.config, "lora_adapters", None) or {})
    if roots is None:
        roots = [name for name in model.roots if _has_default_targets(model, name)]
        if not roots:
            raise ValueError(
                f"no root of {list(model.roots)} has default LoRA targets; name roots and target_modules"
            )
    if r < 1:
        raise ValueError(f"LoRA rank r={r}; expected a positive integer")
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout={lora_dropout}; expected a probability in [0, 1)")
    adapters = {}
    for root in roots:
        if root not in model.roots:
            raise ValueError(f"unknown root {root!r}; roots are {list(model.roots)}")
        if root in existing:
            raise ValueError(f"root {root!r} already has LoRA adapters; merge_lora first")
        targets = list(target_modules) if target_modules is not None else default_target_modules(model, root)
        adapters[root] = {"r": int(r), "lora_alpha": float(lora_alpha), "lora_dropout": float(lora_dropout),
                          "target_modules": targets}  # fmt: skip
    inject_lora(model, adapters)
    model.config.lora_adapters = {**existing, **adapters}


def _has_default_targets(model: Any, root: str) -> bool:
    node = model.config.roots[root]
    return node["type"] in NATIVE_TARGET_MODULES or (
        node["type"] == "hf" and node["hf_config"]["model_type"] in HF_TARGET_MODULES
    )


def inject_lora(model: nn.Module, adapters: Mapping[str, Mapping[str, Any]]) -> None:
    """Builds the adapter modules of `adapters` (root -> {r, lora_alpha, lora_dropout, target_modules}) in the
    roots of `model` and freezes every other weight of those roots. Called by `NeuralTreeModel.__init__` for
    `config.lora_adapters`, so loading a saved tree rebuilds the modules its state dict holds."""
    if is_peft_available():  # guarded so that remote-code copies of this file need peft only for LoRA trees
        from peft import LoraConfig, inject_adapter_in_model
    else:
        raise ImportError("this tree has LoRA adapters (config.lora_adapters); install peft to build them")
    for root, settings in adapters.items():
        unknown = sorted(set(settings) - set(LORA_FIELDS))
        if unknown or "target_modules" not in settings:
            raise ValueError(
                f"lora_adapters[{root!r}] has keys {sorted(settings)}; expected {list(LORA_FIELDS)}"
            )
        module = model.roots[root]
        names = {name.rsplit(".", 1)[-1] for name, _ in module.named_modules()}
        missing = [t for t in settings["target_modules"] if t not in names]
        if missing:
            raise ValueError(
                f"root {root!r} has no modules named {missing} to adapt; LoRA targets must name its layers"
            )
        config = LoraConfig(
            r=settings.get("r", 8),
            lora_alpha=settings.get("lora_alpha", 16.0),
            lora_dropout=settings.get("lora_dropout", 0.0),
            target_modules=list(settings["target_modules"]),
        )
        inject_adapter_in_model(config, module, adapter_name="default")
    freeze_lora_roots(model)


def freeze_lora_roots(model: nn.Module) -> None:
    """In every root listed in `config.lora_adapters` (or holding adapters), only adapter weights train.
    Called again after loading, which re-creates parameters with requires_grad=True."""
    for module in model.roots.values():
        names = [name for name, _ in module.named_parameters()]
        if not any(".lora_" in name for name in names):
            continue
        for name, parameter in module.named_parameters():
            parameter.requires_grad = ".lora_" in name


def merge_lora(model: Any) -> None:
    """Folds every root's adapters into its weights (W + scale * B A), removes the adapter modules, unfreezes
    the roots and clears `config.lora_adapters`: the result is a plain tree (predictions unchanged)."""
    if is_peft_available():
        from peft.tuners.lora import LoraLayer
    else:
        raise ImportError("LoRA needs peft: pip install peft")
    for root in list(getattr(model.config, "lora_adapters", None) or {}):
        module = model.roots[root]
        for name, layer in list(module.named_modules()):
            if isinstance(layer, LoraLayer):
                layer.merge()
                parent_name, _, child = name.rpartition(".")
                parent = module.get_submodule(parent_name) if parent_name else module
                setattr(parent, child, layer.get_base_layer())
        module.requires_grad_(True)
    model.config.lora_adapters = {}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


__all__ = [
    "HF_TARGET_MODULES",
    "NATIVE_TARGET_MODULES",
    "add_lora",
    "count_parameters",
    "default_target_modules",
    "freeze_lora_roots",
    "inject_lora",
    "merge_lora",
]
