"""NeuralTreeModel: the HF-native multi-task tree (roots -> trunk -> branches -> leaves).

Save/load: `save_pretrained(dir)` writes config.json, model.safetensors and one `tokenizer/<root>/` folder per
root tokenizer; `from_pretrained(dir)` (or AutoModel.from_pretrained after `import cortex`) restores all three
without re-reading pretrained weights of hf roots (they are in model.safetensors).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import BertTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from cortex.data.tokenization import ProteinTokenizer, load_tokenizer, save_tokenizer, token_masks
from cortex.model.branches import Branch, BranchOutput
from cortex.model.configuration_neural_tree import LM_LEAF_TYPES, HFRootConfig, NeuralTreeConfig
from cortex.model.leaves import LEAF_CLASSES
from cortex.model.roots import Root, RootOutput, build_root
from cortex.model.trunks import TrunkOutput, build_trunk

TOKENIZER_DIR = "tokenizer"
ROOT_INPUT_KEYS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "inputs_embeds",
    "noise_level",
    "is_corruptible",
    "position_ids",
)


@dataclass
class NeuralTreeOutput(ModelOutput):
    """loss: summed leaf losses (only when labels were given); root_outputs, branch_outputs, leaf_outputs: dicts
    keyed by node name (only computed nodes); trunk_output: TrunkOutput."""

    loss: torch.Tensor | None = None
    root_outputs: dict[str, RootOutput] | None = None
    trunk_output: TrunkOutput | None = None
    branch_outputs: dict[str, BranchOutput] | None = None
    leaf_outputs: dict[str, ModelOutput] | None = None


def build_tokenizer(config: Any) -> PreTrainedTokenizerBase | None:
    """The tokenizer a root config names: "protein" for native roots; for hf roots a saved tokenizer directory
    or a BERT vocab.txt (`tokenizer_path`), or None when the config names none."""
    if not isinstance(config, HFRootConfig):
        return ProteinTokenizer()
    path = config.tokenizer_path
    if path is None:
        return None
    if os.path.isdir(path):
        return load_tokenizer(path)
    if os.path.isfile(path):
        # transformers 5 ignores `vocab_file=` here; `vocab=` is the argument both 4.5x and 5.x read.
        return BertTokenizer(vocab=path, do_lower_case=False)
    raise ValueError(f"hf root tokenizer_path {path!r} is neither a tokenizer directory nor a vocab file")


class NeuralTreePreTrainedModel(PreTrainedModel):
    config_class = NeuralTreeConfig
    base_model_prefix = "neural_tree"
    main_input_name = "input_ids"

    def _init_weights(self, module: nn.Module) -> None:
        """Native nodes keep their constructors' PyTorch default init, as the original; hf roots are built (or
        loaded) initialised and flagged `_is_hf_initialized`, so this never re-draws their weights."""


class NeuralTreeModel(NeuralTreePreTrainedModel):
    """Multi-task tree. See docs/architecture.md for the forward contract.

    Args:
        config: NeuralTreeConfig.
        tokenizers: root name -> tokenizer; missing ones are built from the config (`build_tokenizer`).
        load_pretrained_roots: read hf roots' `pretrained_path` weights (False when loading a saved tree).
    """

    def __init__(
        self,
        config: NeuralTreeConfig,
        tokenizers: dict[str, PreTrainedTokenizerBase | None] | None = None,
        load_pretrained_roots: bool = True,
    ):
        super().__init__(config)
        if not config.root_configs:
            raise ValueError("NeuralTreeConfig has no roots; a model needs at least one root")
        tokenizers = dict(tokenizers or {})
        self.tokenizers: dict[str, PreTrainedTokenizerBase | None] = {}
        roots = {}
        for name, root_config in config.root_configs.items():
            tokenizer = tokenizers[name] if name in tokenizers else build_tokenizer(root_config)
            self.tokenizers[name] = tokenizer
            corruptible = token_masks(tokenizer)[0] if tokenizer is not None else None
            vocab_size = len(tokenizer) if tokenizer is not None else None
            pad_id = tokenizer.pad_token_id if tokenizer is not None else None
            roots[name] = build_root(root_config, vocab_size, pad_id, corruptible, load_pretrained_roots)
        self.roots = nn.ModuleDict(roots)
        # LoRA adapters recorded by cortex.peft.add_lora: rebuilt here so a saved tree loads its adapter weights.
        lora_adapters = getattr(config, "lora_adapters", None)
        if lora_adapters:
            from cortex.peft import inject_lora

            inject_lora(self, lora_adapters)
        trunk_roots = config.trunk_config.roots
        self.trunk = build_trunk(
            config.trunk_config, [self.roots[r].out_dim for r in trunk_roots], config.trunk_width
        )
        trunk_length = max(self.roots[r].max_length for r in trunk_roots)  # positions a branch can see
        self.branches = nn.ModuleDict(
            {
                name: Branch(branch, config.trunk_width, trunk_length)
                for name, branch in config.branch_configs.items()
            }
        )
        leaves = {}
        for name, leaf_config in config.leaf_configs.items():
            branch = self.branches[leaf_config.branch]
            leaf_class = LEAF_CLASSES[type(leaf_config)]
            if config.leaves[name]["type"] in LM_LEAF_TYPES:
                vocab_size = self.roots[leaf_config.root].vocab_size
                leaves[name] = leaf_class(leaf_config, branch.out_dim, branch.ensemble_size, vocab_size)
            else:
                leaves[name] = leaf_class(leaf_config, branch.out_dim, branch.ensemble_size)
        self.leaves = nn.ModuleDict(leaves)
        self.post_init()

    # ---- tokenizers and inputs -------------------------------------------------------------------------------

    def get_tokenizer(self, root: str) -> PreTrainedTokenizerBase:
        """The tokenizer of `root`; ValueError for an unknown root or a root configured without one."""
        if root not in self.roots:
            raise ValueError(f"unknown root {root!r}; roots are {list(self.roots)}")
        tokenizer = self.tokenizers[root]
        if tokenizer is None:
            raise ValueError(f"root {root!r} has no tokenizer; set tokenizer_path in its config")
        return tokenizer

    def tokenize(self, sequences: list[str], root: str | None = None) -> dict[str, torch.Tensor]:
        """Residue strings -> {"input_ids", "attention_mask"} (B, L) for `root` (default: the only root), padded
        to the longest. ValueError for an empty sequence, an unknown residue or a sequence over max_length."""
        root = self._single_root(root)
        tokenizer = self.get_tokenizer(root)
        allowed = _residue_vocabulary(tokenizer)
        for index, sequence in enumerate(sequences):
            residues = "".join(sequence.split())
            if not residues:
                raise ValueError(f"sequences[{index}] is empty; expected at least one residue")
            for position, residue in enumerate(residues):
                if residue not in allowed:
                    raise ValueError(
                        f"sequences[{index}] has unknown residue {residue!r} at position {position}; "
                        f"root {root!r} accepts {''.join(sorted(allowed))}"
                    )
            if len(residues) > self.roots[root].max_length:
                raise ValueError(
                    f"sequences[{index}] has {len(residues)} residues; root {root!r} accepts at most "
                    f"{self.roots[root].max_length}"
                )
        if self.config.root_configs[root].__dict__.get("space_separated", False):
            sequences = [" ".join("".join(s.split())) for s in sequences]
        encoded = tokenizer(
            list(sequences),
            padding=True,
            add_special_tokens=False,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _single_root(self, root: str | None) -> str:
        if root is None:
            if len(self.roots) != 1:
                raise ValueError(f"name a root: this tree has roots {list(self.roots)}")
            return next(iter(self.roots))
        if root not in self.roots:
            raise ValueError(f"unknown root {root!r}; roots are {list(self.roots)}")
        return root

    # ---- receptive field --------------------------------------------------------------------------------------

    def receptive_radius(self, root: str, leaf: str) -> int | None:
        """R such that the outputs of `leaf` at position i depend on the inputs of `root` only at positions
        [i - R, i + R] (given the same `position_ids` and the other roots' inputs), or None when they may depend
        on any position: attention or hf roots and branches, and leaves reading pooled features. In eval mode a
        forward of the window [i - R, i + R] (clipped to the sequence; positions kept through `position_ids`)
        then gives the same outputs at i as the full sequence. Computed from the nodes: root radius + branch
        radius + leaf radius (the trunk merges roots per position)."""
        self._single_root(root)
        if leaf not in self.leaves:
            raise ValueError(f"unknown leaf {leaf!r}; leaves are {list(self.leaves)}")
        if root not in self.config.trunk_config.roots:
            raise ValueError(
                f"root {root!r} does not feed the trunk (trunk roots {self.config.trunk_config.roots}); "
                "expected a trunk root"
            )
        node = self.leaves[leaf]
        radii = [self.roots[root].receptive_radius(), self.branches[node.branch].receptive_radius()]
        radii.append(node.receptive_radius())
        return None if any(r is None for r in radii) else sum(radii)

    # ---- corruption ------------------------------------------------------------------------------------------

    def attach_corruption(self, processes: dict[str, nn.Module]) -> None:
        """root name -> corruption process (see Root.attach_corruption); state dict and config are unchanged."""
        for root, process in processes.items():
            self._single_root(root)
            self.roots[root].attach_corruption(process)

    # ---- forward ---------------------------------------------------------------------------------------------

    def forward_trunk(
        self, root_inputs: dict[str, dict[str, torch.Tensor]]
    ) -> tuple[dict[str, RootOutput], TrunkOutput]:
        """Runs every trunk root on its inputs (see Root.forward) and merges them."""
        missing = [r for r in self.config.trunk_config.roots if r not in root_inputs]
        unknown = [r for r in root_inputs if r not in self.roots]
        if missing or unknown:
            raise ValueError(
                f"root_inputs has keys {list(root_inputs)}; missing roots {missing}, unknown roots {unknown}; "
                f"expected {list(self.roots)}"
            )
        root_outputs = {}
        for name in self.config.trunk_config.roots:
            inputs = root_inputs[name]
            bad = [k for k in inputs if k not in ROOT_INPUT_KEYS]
            if bad:
                raise ValueError(
                    f"root_inputs[{name!r}] has unknown keys {bad}; expected some of {ROOT_INPUT_KEYS}"
                )
            root_outputs[name] = self.roots[name](**inputs)
        trunk_output = self.trunk(
            [o.last_hidden_state for o in root_outputs.values()],
            [o.attention_mask for o in root_outputs.values()],
        )
        return root_outputs, trunk_output

    def forward_heads(
        self, trunk_output: TrunkOutput, leaves: list[str] | None = None
    ) -> tuple[dict[str, BranchOutput], dict[str, ModelOutput]]:
        """Branches needed by `leaves` (default: all), each computed once, then those leaves."""
        leaves = list(self.leaves) if leaves is None else list(leaves)
        unknown = [leaf for leaf in leaves if leaf not in self.leaves]
        if unknown:
            raise ValueError(f"unknown leaves {unknown}; leaves are {list(self.leaves)}")
        branch_outputs: dict[str, BranchOutput] = {}
        leaf_outputs: dict[str, ModelOutput] = {}
        for name in leaves:
            leaf = self.leaves[name]
            if leaf.branch not in branch_outputs:
                branch_outputs[leaf.branch] = self.branches[leaf.branch](
                    trunk_output.last_hidden_state, trunk_output.attention_mask
                )
            leaf_outputs[name] = leaf(branch_outputs[leaf.branch])
        return branch_outputs, leaf_outputs

    def forward(
        self,
        root_inputs: dict[str, dict[str, torch.Tensor]] | None = None,
        leaves: list[str] | None = None,
        labels: dict[str, torch.Tensor | None] | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        noise_level: torch.Tensor | None = None,
    ) -> NeuralTreeOutput:
        """root_inputs: root name -> inputs of Root.forward; single-root shorthand: input_ids / attention_mask /
        inputs_embeds / noise_level. leaves: leaf names to compute (default all). labels: leaf name -> labels of
        that leaf's loss (regressor (B, T) NaN = missing; classifier (B,) -100 = missing; LM leaves: None to use
        the root's clean ids); loss = sum of those leaves' losses (without label smoothing; tasks own that)."""
        root_inputs = self._root_inputs(root_inputs, input_ids, attention_mask, inputs_embeds, noise_level)
        if labels is not None and leaves is not None:
            leaves = list(dict.fromkeys([*leaves, *labels]))
        root_outputs, trunk_output = self.forward_trunk(root_inputs)
        branch_outputs, leaf_outputs = self.forward_heads(trunk_output, leaves)
        return NeuralTreeOutput(
            loss=self._loss(root_outputs, leaf_outputs, labels),
            root_outputs=root_outputs,
            trunk_output=trunk_output,
            branch_outputs=branch_outputs,
            leaf_outputs=leaf_outputs,
        )

    def guided_forward(
        self,
        root_inputs: dict[str, dict[str, torch.Tensor]],
        trunk_offset: torch.Tensor,
        leaves: list[str] | None = None,
    ) -> NeuralTreeOutput:
        """Forward with `trunk_offset` (B, L, D) added to the trunk features (LaMBO-2 guidance)."""
        root_outputs, trunk_output = self.forward_trunk(root_inputs)
        if trunk_offset.shape != trunk_output.last_hidden_state.shape:
            raise ValueError(
                f"trunk_offset has shape {tuple(trunk_offset.shape)}; expected "
                f"{tuple(trunk_output.last_hidden_state.shape)}"
            )
        guided = TrunkOutput(
            last_hidden_state=trunk_output.last_hidden_state + trunk_offset,
            attention_mask=trunk_output.attention_mask,
        )
        branch_outputs, leaf_outputs = self.forward_heads(guided, leaves)
        return NeuralTreeOutput(
            root_outputs=root_outputs,
            trunk_output=guided,
            branch_outputs=branch_outputs,
            leaf_outputs=leaf_outputs,
        )

    def _root_inputs(self, root_inputs, input_ids, attention_mask, inputs_embeds, noise_level):
        shorthand = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "inputs_embeds": inputs_embeds,
            "noise_level": noise_level,
        }
        shorthand = {k: v for k, v in shorthand.items() if v is not None}
        if root_inputs is not None and shorthand:
            raise ValueError(f"pass root_inputs or the single-root shorthand {sorted(shorthand)}, not both")
        if root_inputs is None:
            if not shorthand:
                raise ValueError("forward needs root_inputs or input_ids / inputs_embeds")
            return {self._single_root(None): shorthand}
        return root_inputs

    def _loss(self, root_outputs, leaf_outputs, labels) -> torch.Tensor | None:
        if not labels:
            return None
        losses = [
            self.leaves[name].tree_loss(leaf_outputs[name], root_outputs, y) for name, y in labels.items()
        ]
        return torch.stack(losses).sum()

    # ---- save / load -----------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """HF save (safetensors only) plus `tokenizer/<root>/` for every root with a tokenizer."""
        kwargs["safe_serialization"] = True
        super().save_pretrained(save_directory, *args, **kwargs)
        for root, tokenizer in self.tokenizers.items():
            if tokenizer is not None:
                save_tokenizer(tokenizer, os.path.join(save_directory, TOKENIZER_DIR, root))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args, **kwargs):
        """Loads a tree saved by `save_pretrained`, with its root tokenizers, from a local directory or a Hub
        repository id (downloaded whole with `snapshot_download`; honours revision, token, cache_dir,
        local_files_only)."""
        directory = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(directory):
            if os.path.exists(directory) or os.path.isabs(directory) or directory.startswith("."):
                raise ValueError(
                    f"{directory!r} is not a directory; expected a save_pretrained directory or a Hub repo id"
                )
            from huggingface_hub import snapshot_download

            hub_keys = ("revision", "token", "cache_dir", "local_files_only")
            directory = snapshot_download(directory, **{k: kwargs[k] for k in hub_keys if k in kwargs})
        tokenizer_root = os.path.join(directory, TOKENIZER_DIR)
        if "tokenizers" not in kwargs and os.path.isdir(tokenizer_root):
            kwargs["tokenizers"] = {
                root: load_tokenizer(os.path.join(tokenizer_root, root))
                for root in sorted(os.listdir(tokenizer_root))
            }
        kwargs.setdefault("load_pretrained_roots", False)
        kwargs.setdefault("use_safetensors", True)
        return_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(directory, *args, output_loading_info=True, **kwargs)
        # HF only logs missing / unexpected keys and leaves missing ones randomly initialised: a partial or
        # foreign weights file must fail instead of loading silently.
        problems = {key: sorted(loading_info.get(key) or ()) for key in ("missing_keys", "unexpected_keys")}
        if any(problems.values()):
            raise ValueError(
                f"weights in {directory!r} do not match its config.json: missing tensors "
                f"{problems['missing_keys'][:10]}, unexpected tensors {problems['unexpected_keys'][:10]}; "
                "expected exactly the tensors NeuralTreeModel.save_pretrained writes"
            )
        for name, root_config in model.config.root_configs.items():
            if isinstance(root_config, HFRootConfig):
                model.roots[name].restore_non_persistent_buffers()
        if getattr(model.config, "lora_adapters", None):
            from cortex.peft import freeze_lora_roots

            freeze_lora_roots(
                model
            )  # loading re-creates parameters trainable; LoRA roots train adapters only
        return (model, loading_info) if return_loading_info else model


def _residue_vocabulary(tokenizer: PreTrainedTokenizerBase) -> frozenset[str]:
    """Single-character tokens of a vocabulary (the residues a sequence may hold)."""
    return frozenset(token for token in tokenizer.get_vocab() if len(token) == 1)


__all__ = ["NeuralTreeModel", "NeuralTreeOutput", "NeuralTreePreTrainedModel", "Root", "build_tokenizer"]
