"""What config.json holds: the architecture of a NeuralTree, validated at construction.

A tree is `roots` (modality encoders) -> one `trunk` -> `branches` -> `leaves`. Every node is a dict with a
`"type"` resolved through one explicit table per node kind (short names, never import paths) into a typed
dataclass whose fields are the node's settings. Edges: `trunk["roots"]` lists root names in order, each leaf
names its `branch`, and language-model leaves name the `root` whose vocabulary they predict. Widths that follow
from other nodes (a branch's input width, an LM leaf's vocabulary) are computed by the model, never stored.

Example::

    NeuralTreeConfig(
        roots={"protein": {"type": "conv1d", "max_length": 64, "out_dim": 32}},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"property": {"type": "mlp", "out_dim": 16, "ensemble_size": 2}},
        leaves={"expression": {"type": "regressor", "branch": "property", "out_dim": 1},
                "protein_mlm": {"type": "mlm", "branch": "property", "root": "protein"}},
    )
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from cortex.model.layers import BLOCK_TYPES, POOLING_TYPES


@dataclass
class TransformerRootConfig:
    """Native transformer encoder over token ids.

    tokenizer: short name of the root's tokenizer ("protein"). max_length: longest accepted sequence (tokens).
    embed_dim / channel_dim / out_dim: token embedding, hidden and output widths. num_blocks >= 1.
    block: "pre_ln" (standard) or "cortex_v1" (the original, spec A1). mask_padding_in_attention: exclude pad keys
    (False reproduces the original, A2). normalize_embeddings: L2-normalise token embeddings then scale by
    sqrt(embed_dim) (spec A6). pos_encoding: add a trainable sinusoidally initialised position table (spec A5).
    """

    tokenizer: str = "protein"
    max_length: int = 512
    embed_dim: int = 64
    channel_dim: int = 64
    out_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    is_causal: bool = False
    dropout: float = 0.0
    block: str = "pre_ln"
    mask_padding_in_attention: bool = True
    normalize_embeddings: bool = True
    pos_encoding: bool = True


@dataclass
class Conv1dRootConfig:
    """Native dilated residual 1-D CNN over token ids (spec 2.2).

    mask_block_input: multiply each block's input by the mask so pad features never leak into real positions
    (False reproduces the original, A4). Other fields as TransformerRootConfig.
    """

    tokenizer: str = "protein"
    max_length: int = 512
    embed_dim: int = 64
    channel_dim: int = 64
    out_dim: int = 64
    num_blocks: int = 2
    kernel_size: int = 5
    dilation: int = 1
    layernorm: bool = True
    dropout: float = 0.0
    mask_block_input: bool = True
    normalize_embeddings: bool = True
    pos_encoding: bool = True


@dataclass
class HFRootConfig:
    """Any transformers encoder (BERT-style, ESM-style, ...).

    hf_config: the model's config dict (`model_type` required), built with AutoModel.from_config. pretrained_path:
    local directory of a pretrained model; weights load from it when the tree is first built, and its config
    fills `hf_config`, so a saved tree reloads from its own files. tokenizer_path: a saved tokenizer directory or
    a BERT `vocab.txt`. space_separated: the vocabulary needs residues separated by spaces ("M K T").
    max_length: longest sequence in tokens (default: the model's position table). freeze: no gradient to the model.
    """

    hf_config: dict[str, Any] | None = None
    pretrained_path: str | None = None
    tokenizer_path: str | None = None
    space_separated: bool = False
    max_length: int | None = None
    freeze: bool = False


@dataclass
class SumTrunkConfig:
    """Sum of root features. Roots whose width differs from out_dim (default: the widest root) are projected
    by a bias-free Linear (fixes A21); project=False requires equal widths. Masks are OR'ed."""

    roots: list[str] = field(default_factory=list)
    out_dim: int | None = None
    project: bool = True


@dataclass
class ConcatTrunkConfig:
    """Root features concatenated along the feature dim, then Linear(sum of widths, out_dim). out_dim defaults
    to the sum of root widths. Masks are OR'ed."""

    roots: list[str] = field(default_factory=list)
    out_dim: int | None = None


@dataclass
class Conv1dBranchConfig:
    """Conv1d residual blocks then pooling; `ensemble_size` independent members. in_dim, if given, must equal
    the trunk width. pooling: "mean", "max" (per-channel max over real positions: motif detectors), "weighted_mean",
    "attention" or "position_weighted" (one trainable weight per position and channel, for aligned sequences such
    as deep mutational scans)."""

    out_dim: int = 64
    channel_dim: int = 64
    num_blocks: int = 2
    kernel_size: int = 5
    layernorm: bool = True
    dropout: float = 0.0
    mask_block_input: bool = True
    pooling: str = "mean"
    num_pooling_heads: int = 4
    ensemble_size: int = 1
    in_dim: int | None = None


@dataclass
class TransformerBranchConfig:
    """Transformer blocks then pooling; see TransformerRootConfig for `block` and `mask_padding_in_attention`."""

    out_dim: int = 64
    channel_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    is_causal: bool = False
    dropout: float = 0.0
    block: str = "pre_ln"
    mask_padding_in_attention: bool = True
    pooling: str = "mean"
    num_pooling_heads: int = 4
    ensemble_size: int = 1
    in_dim: int | None = None


@dataclass
class MLPBranchConfig:
    """Per-position MLP (num_layers x [Linear, GELU] then Linear to out_dim), then pooling."""

    out_dim: int = 64
    hidden_dim: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    pooling: str = "mean"
    num_pooling_heads: int = 4
    ensemble_size: int = 1
    in_dim: int | None = None


@dataclass
class RegressorLeafConfig:
    """Natural-parameter Gaussian head on a branch's pooled features (spec 3.1-3.3). out_dim: number of targets
    T. nominal_label_var: sigma_0^2 of the label distribution for label smoothing. var_lb: variance floor."""

    branch: str = ""
    out_dim: int = 1
    num_layers: int = 0
    nominal_label_var: float = 0.0625
    var_lb: float = 1e-4


@dataclass
class ClassifierLeafConfig:
    """Classification head on pooled features (spec 2.7): [LayerNorm] + num_layers x [Linear, ReLU] + Linear."""

    branch: str = ""
    num_classes: int = 2
    num_layers: int = 0
    layernorm: bool = False
    last_layer_bias: bool = True


@dataclass
class MLMLeafConfig:
    """Masked-language-model head: per-position logits over the vocabulary of `root`."""

    branch: str = ""
    root: str = ""
    num_layers: int = 0
    layernorm: bool = True


@dataclass
class CausalLMLeafConfig:
    """Next-token head: per-position logits over the vocabulary of `root` (use a causal root/branch)."""

    branch: str = ""
    root: str = ""
    num_layers: int = 0
    layernorm: bool = True


ROOT_TYPES: dict[str, type] = {
    "transformer": TransformerRootConfig,
    "conv1d": Conv1dRootConfig,
    "hf": HFRootConfig,
}
TRUNK_TYPES: dict[str, type] = {"sum": SumTrunkConfig, "concat": ConcatTrunkConfig}
BRANCH_TYPES: dict[str, type] = {
    "conv1d": Conv1dBranchConfig,
    "transformer": TransformerBranchConfig,
    "mlp": MLPBranchConfig,
}
LEAF_TYPES: dict[str, type] = {
    "regressor": RegressorLeafConfig,
    "classifier": ClassifierLeafConfig,
    "mlm": MLMLeafConfig,
    "causal_lm": CausalLMLeafConfig,
}
LM_LEAF_TYPES: tuple[str, ...] = ("mlm", "causal_lm")


def _parse_node(kind: str, name: str, node: Any, table: dict[str, type]) -> Any:
    """Node dict -> typed dataclass, with errors naming the node, the bad value and the valid ones."""
    where = f"{kind} {name!r}" if name else kind
    if not isinstance(node, dict):
        raise ValueError(f"{where} must be a dict with a 'type' key; got {type(node).__name__} {node!r}")
    node_type = node.get("type")
    if node_type not in table:
        raise ValueError(f"{where} has unknown type {node_type!r}; expected one of {sorted(table)}")
    config_class = table[node_type]
    valid = [f.name for f in dataclasses.fields(config_class)]
    unknown = sorted(set(node) - set(valid) - {"type"})
    if unknown:
        raise ValueError(
            f"{where} (type {node_type!r}) has unknown field(s) {unknown}; valid fields: {valid}"
        )
    parsed = config_class(**{k: v for k, v in node.items() if k != "type"})
    _check_field_types(f"{where} (type {node_type!r})", parsed)
    return parsed


# Annotation (as written in the dataclasses) -> accepted Python types; bool is never accepted as an int.
_SCALAR_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
}


# Sizes that must be >= 1 wherever they appear (num_layers and num_blocks of heads may be 0 where allowed).
_POSITIVE_FIELDS: frozenset[str] = frozenset(
    {"max_length", "embed_dim", "channel_dim", "num_heads", "kernel_size", "dilation", "hidden_dim",
     "num_pooling_heads", "ensemble_size", "num_classes"}
)  # fmt: skip


def _check_field_types(where: str, config: Any) -> None:
    """Scalar fields hold their annotated type (ints >= 0, finite floats, dropout in [0, 1)), so that a bad
    value fails here, naming the field, instead of deep inside a layer constructor."""
    for f in dataclasses.fields(config):
        annotation = str(f.type).replace(" ", "")
        optional = annotation.endswith("|None")
        expected = _SCALAR_TYPES.get(annotation.removesuffix("|None"))
        value = getattr(config, f.name)
        if annotation == "list[str]" and (
            not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"{where}: {f.name} must be a list of names; got {value!r}")
        if expected is None or (optional and value is None):
            continue
        wrong_type = not isinstance(value, expected) or (bool not in expected and isinstance(value, bool))
        if wrong_type:
            names = " or ".join(t.__name__ for t in expected) + (" or None" if optional else "")
            raise ValueError(f"{where}: {f.name} must be {names}; got {type(value).__name__} {value!r}")
        if (int in expected and bool not in expected and not math.isfinite(value)) or (
            expected == (int,) and value < 0
        ):
            raise ValueError(f"{where}: {f.name} must be a finite non-negative number; got {value!r}")
        if f.name in _POSITIVE_FIELDS and value < 1:
            raise ValueError(f"{where}: {f.name} must be a positive integer; got {value!r}")
        if f.name == "dropout" and not 0.0 <= value < 1.0:
            raise ValueError(f"{where}: dropout must be in [0, 1); got {value!r}")


def _node_dict(node_type: str, node: Any) -> dict[str, Any]:
    return {"type": node_type, **dataclasses.asdict(node)}


def _require_positive(where: str, name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer; got {value!r}")


class NeuralTreeConfig(PretrainedConfig):
    r"""Architecture of a NeuralTree: roots -> trunk -> branches -> leaves.

    Args:
        roots (`dict[str, dict]`): root name -> node dict; types "transformer", "conv1d", "hf".
        trunk (`dict`): types "sum", "concat"; `roots` lists the root names it merges, in order.
        branches (`dict[str, dict]`): branch name -> node dict; types "conv1d", "transformer", "mlp".
        leaves (`dict[str, dict]`): leaf name -> node dict; types "regressor", "classifier", "mlm", "causal_lm".

    Node dicts are normalised at construction (defaults filled in), so `to_dict`/`from_dict` round-trip exactly.
    Typed views: `root_configs`, `trunk_config`, `branch_configs`, `leaf_configs`. Raises ValueError for an
    unknown node type or field, a trunk naming a missing root, a leaf on a missing branch, an LM leaf naming a
    missing root, mismatched widths, or a bad ensemble size.
    """

    model_type = "neural_tree"

    def __init__(
        self,
        roots: dict[str, dict] | None = None,
        trunk: dict | None = None,
        branches: dict[str, dict] | None = None,
        leaves: dict[str, dict] | None = None,
        **kwargs,
    ):
        roots = dict(roots or {})
        branches = dict(branches or {})
        leaves = dict(leaves or {})
        if trunk is None:
            trunk = {"type": "sum", "roots": list(roots)}
        self.root_configs = {
            name: _parse_node("root", name, node, ROOT_TYPES) for name, node in roots.items()
        }
        self.trunk_config = _parse_node("trunk", "", trunk, TRUNK_TYPES)
        self.branch_configs = {
            name: _parse_node("branch", name, n, BRANCH_TYPES) for name, n in branches.items()
        }
        self.leaf_configs = {
            name: _parse_node("leaf", name, node, LEAF_TYPES) for name, node in leaves.items()
        }
        self.roots = {name: _node_dict(node["type"], self.root_configs[name]) for name, node in roots.items()}
        self.trunk = _node_dict(trunk["type"], self.trunk_config)
        self.branches = {
            name: _node_dict(n["type"], self.branch_configs[name]) for name, n in branches.items()
        }
        self.leaves = {
            name: _node_dict(node["type"], self.leaf_configs[name]) for name, node in leaves.items()
        }
        self._validate()
        super().__init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for typed_view in ("root_configs", "trunk_config", "branch_configs", "leaf_configs"):
            output.pop(typed_view, None)
        return output

    def _validate(self) -> None:
        for name, root in self.root_configs.items():
            where = f"root {name!r}"
            if isinstance(root, HFRootConfig):
                self._complete_hf_root(name, root)
                continue
            for width in ("max_length", "embed_dim", "channel_dim", "out_dim", "num_blocks"):
                _require_positive(where, width, getattr(root, width))
            if root.tokenizer not in ROOT_TOKENIZERS:
                raise ValueError(
                    f"{where} has unknown tokenizer {root.tokenizer!r}; expected one of {sorted(ROOT_TOKENIZERS)}"
                )
            if isinstance(root, TransformerRootConfig):
                self._check_attention(where, root.block, root.num_heads, (root.embed_dim, root.channel_dim))
        trunk = self.trunk_config
        if not trunk.roots and self.root_configs:
            raise ValueError(f"trunk lists no roots; expected some of {list(self.root_configs)}")
        for root_name in trunk.roots:
            if root_name not in self.root_configs:
                raise ValueError(
                    f"trunk names missing root {root_name!r}; roots are {list(self.root_configs)}"
                )
        unused = [name for name in self.root_configs if name not in trunk.roots]
        if unused:
            raise ValueError(f"roots {unused} are not merged by the trunk; trunk roots are {trunk.roots}")
        widths = [self.root_width(name) for name in trunk.roots]
        if isinstance(trunk, SumTrunkConfig) and not trunk.project and len(set(widths)) > 1:
            raise ValueError(
                f"sum trunk with project=False needs equal root widths; got mismatched widths "
                f"{dict(zip(trunk.roots, widths))}"
            )
        if isinstance(trunk, SumTrunkConfig) and not trunk.project and trunk.out_dim not in (None, *widths):
            raise ValueError(
                f"sum trunk with project=False: out_dim {trunk.out_dim} mismatches root widths {widths}"
            )
        if trunk.out_dim is not None:
            _require_positive("trunk", "out_dim", trunk.out_dim)
        trunk_width = self.trunk_width if self.root_configs else None
        for name, branch in self.branch_configs.items():
            where = f"branch {name!r}"
            _require_positive(where, "ensemble_size", branch.ensemble_size)
            _require_positive(where, "out_dim", branch.out_dim)
            if branch.pooling not in POOLING_TYPES:
                raise ValueError(
                    f"{where} has unknown pooling {branch.pooling!r}; expected one of {POOLING_TYPES}"
                )
            if branch.pooling == "attention" and branch.out_dim % branch.num_pooling_heads != 0:
                raise ValueError(
                    f"{where}: out_dim {branch.out_dim} is not divisible by num_pooling_heads "
                    f"{branch.num_pooling_heads}"
                )
            if branch.in_dim is not None and branch.in_dim != trunk_width:
                raise ValueError(
                    f"{where} has in_dim {branch.in_dim} but the trunk width is {trunk_width} (mismatch)"
                )
            if isinstance(branch, TransformerBranchConfig):
                widths = (trunk_width or branch.channel_dim, branch.channel_dim)
                self._check_attention(where, branch.block, branch.num_heads, widths)
        for name, leaf in self.leaf_configs.items():
            where = f"leaf {name!r}"
            if leaf.branch not in self.branch_configs:
                raise ValueError(
                    f"{where} is on missing branch {leaf.branch!r}; branches are {list(self.branches)}"
                )
            if self.leaves[name]["type"] in LM_LEAF_TYPES and leaf.root not in self.root_configs:
                raise ValueError(
                    f"{where} predicts missing root {leaf.root!r}; roots are {list(self.root_configs)}"
                )
            if isinstance(leaf, RegressorLeafConfig):
                _require_positive(where, "out_dim", leaf.out_dim)
                if not leaf.nominal_label_var > 0 or not leaf.var_lb > 0:
                    raise ValueError(
                        f"{where}: nominal_label_var ({leaf.nominal_label_var}) and var_lb ({leaf.var_lb}) must be > 0"
                    )
            if isinstance(leaf, ClassifierLeafConfig):
                _require_positive(where, "num_classes", leaf.num_classes)

    @staticmethod
    def _check_attention(where: str, block: str, num_heads: int, widths: tuple[int, ...]) -> None:
        if block not in BLOCK_TYPES:
            raise ValueError(f"{where} has unknown block {block!r}; expected one of {BLOCK_TYPES}")
        _require_positive(where, "num_heads", num_heads)
        for width in widths:
            if width % num_heads != 0:
                raise ValueError(f"{where}: width {width} is not divisible by num_heads={num_heads}")

    def _complete_hf_root(self, name: str, root: HFRootConfig) -> None:
        where = f"root {name!r}"
        if root.hf_config is None and root.pretrained_path is None:
            raise ValueError(f"{where} (type 'hf') needs hf_config or pretrained_path; got neither")
        if root.hf_config is None:
            root.hf_config = AutoConfig.from_pretrained(root.pretrained_path, local_files_only=True).to_dict()
            self.roots[name]["hf_config"] = root.hf_config
        if "model_type" not in root.hf_config:
            raise ValueError(f"{where}: hf_config needs a 'model_type'; got keys {sorted(root.hf_config)}")
        if "hidden_size" not in root.hf_config:
            raise ValueError(f"{where}: hf_config needs 'hidden_size'; got keys {sorted(root.hf_config)}")

    def root_width(self, name: str) -> int:
        """Output feature width of root `name`."""
        root = self.root_configs[name]
        if isinstance(root, HFRootConfig):
            return int(root.hf_config["hidden_size"])
        return root.out_dim

    @property
    def trunk_width(self) -> int:
        """Width of the trunk features: out_dim, else the widest root (sum) or the summed widths (concat)."""
        trunk = self.trunk_config
        widths = [self.root_width(name) for name in trunk.roots]
        if trunk.out_dim is not None:
            return trunk.out_dim
        return max(widths) if isinstance(trunk, SumTrunkConfig) else sum(widths)


# Tokenizers a native root may name (short name -> zero-argument constructor, resolved lazily by the model).
ROOT_TOKENIZERS: tuple[str, ...] = ("protein",)
