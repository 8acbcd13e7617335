"""Roots: modality encoders from token ids (or input embeddings) to features (B, L, D).

Every root runs the same pipeline (one graph for every noise level):
  input_ids --ids corruption--> noisy_ids --embed--> inputs_embeds --embeds corruption--> encoder -> features.
A root without an attached corruption process uses `IdentityCorruption` for both steps. Which step a process
acts on is decided once, in `attach_corruption`, from its `acts_on` attribute ("ids" or "embeds").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.utils import ModelOutput

from cortex.model.configuration_neural_tree import Conv1dRootConfig, HFRootConfig, TransformerRootConfig
from cortex.model.layers import Conv1dResidBlock, block_widths, sinusoidal_table, transformer_stack

CORRUPTION_TARGETS: tuple[str, ...] = ("ids", "embeds")


@dataclass
class RootOutput(ModelOutput):
    """Output of a root.

    last_hidden_state (B, L, D); attention_mask (B, L) long, 1 = real token; inputs_embeds (B, L, De): the
    (possibly corrupted) embeddings the encoder saw; clean_ids / noisy_ids (B, L) long (None when the root was fed
    embeddings); is_corrupted (B, L) bool; noise_level (B,) float.
    """

    last_hidden_state: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    inputs_embeds: torch.Tensor | None = None
    clean_ids: torch.Tensor | None = None
    noisy_ids: torch.Tensor | None = None
    is_corrupted: torch.Tensor | None = None
    noise_level: torch.Tensor | None = None


class IdentityCorruption(nn.Module):
    """The corruption process of a root without one: returns its input and marks nothing corrupted."""

    acts_on = "ids"

    def add_noise(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        is_corruptible: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, torch.zeros_like(is_corruptible, dtype=torch.bool)


class Root(nn.Module):
    """Shared pipeline of every root. Subclasses set `vocab_size`, `pad_token_id`, `max_length`, `out_dim` and
    implement `embed(input_ids) -> (B, L, De)`, `get_input_embeddings()` and `encode(embeds, attention_mask)`.

    `corruptible_token_mask` (V,) bool buffer (saved with the model): tokens a corruption process may change.
    """

    vocab_size: int
    pad_token_id: int
    max_length: int
    out_dim: int

    def _init_pipeline(self, corruptible_token_mask: torch.Tensor | None) -> None:
        mask = torch.ones(self.vocab_size, dtype=torch.bool)
        if corruptible_token_mask is not None:
            if corruptible_token_mask.shape[0] > self.vocab_size:
                raise ValueError(
                    f"tokenizer has {corruptible_token_mask.shape[0]} tokens but the root's vocabulary has "
                    f"{self.vocab_size}; expected at most {self.vocab_size}"
                )
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            mask[: corruptible_token_mask.shape[0]] = corruptible_token_mask
        self.register_buffer("corruptible_token_mask", mask)
        self.ids_corruption: nn.Module = IdentityCorruption()
        self.embeds_corruption: nn.Module = IdentityCorruption()

    def receptive_radius(self) -> int | None:
        """R such that output position i depends on the inputs only at positions [i - R, i + R] (given the
        same `position_ids`), or None when an output may depend on any position (the default: attention)."""
        return None

    def attach_corruption(self, process: nn.Module) -> None:
        """Makes `process` (an nn.Module with `add_noise` and `acts_on` in CORRUPTION_TARGETS) this root's noise."""
        acts_on = getattr(process, "acts_on", None)
        if acts_on not in CORRUPTION_TARGETS:
            raise ValueError(
                f"corruption process {type(process).__name__} has acts_on={acts_on!r}; expected one of "
                f"{CORRUPTION_TARGETS}"
            )
        self.ids_corruption = process if acts_on == "ids" else IdentityCorruption()
        self.embeds_corruption = process if acts_on == "embeds" else IdentityCorruption()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        noise_level: torch.Tensor | None = None,
        is_corruptible: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> RootOutput:
        """input_ids (B, L) long or inputs_embeds (B, L, De); attention_mask (B, L), 1 = real token (default: ids
        that are not pad, or all ones for embeddings); noise_level (B,) in [0, 1] (default 0 = clean);
        is_corruptible (B, L) bool (default: real tokens whose id is corruptible); position_ids (B, L) long:
        absolute position of each token in [0, max_length] (default: 0 .. L - 1), so a window cut from a longer
        sequence keeps its positions (native roots only)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("root inputs need exactly one of input_ids or inputs_embeds")
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference.dim() != (2 if input_ids is not None else 3):
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(
                f"{name} has shape {tuple(reference.shape)}; expected (B, L) ids or (B, L, De) embeds"
            )
        batch, length = reference.shape[:2]
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds the root's max_length {self.max_length}")
        if length == 0:
            raise ValueError("root inputs are empty (length 0); expected at least one token")
        if attention_mask is None:
            attention_mask = (
                (input_ids != self.pad_token_id).long()
                if input_ids is not None
                else torch.ones(batch, length, dtype=torch.long, device=reference.device)
            )
        if tuple(attention_mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected {(batch, length)}"
            )
        if noise_level is None:
            noise_level = torch.zeros(batch, device=reference.device)
        real = attention_mask.bool()
        if input_ids is not None:
            if is_corruptible is None:
                is_corruptible = self.corruptible_token_mask[input_ids] & real
            noisy_ids, corrupted_ids = self.ids_corruption.add_noise(input_ids, noise_level, is_corruptible)
            embeds = self.embed(noisy_ids)
        else:
            if is_corruptible is None:
                is_corruptible = real
            noisy_ids, corrupted_ids = None, torch.zeros_like(real)
            embeds = inputs_embeds
        embeds, corrupted_embeds = self.embeds_corruption.add_noise(embeds, noise_level, is_corruptible)
        return RootOutput(
            last_hidden_state=self.encode(embeds, attention_mask, position_ids),
            attention_mask=attention_mask,
            inputs_embeds=embeds,
            clean_ids=input_ids,
            noisy_ids=noisy_ids,
            is_corrupted=corrupted_ids | corrupted_embeds,
            noise_level=noise_level,
        )


class NativeRoot(Root):
    """Token embedding (L2-normalised x sqrt(De), spec A6), trainable sinusoidal positions (1, max_length + 1, De)
    (spec A5), then an encoder built by the subclass."""

    def __init__(
        self,
        config: TransformerRootConfig | Conv1dRootConfig,
        vocab_size: int,
        pad_token_id: int,
        corruptible_token_mask: torch.Tensor | None = None,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.pad_token_id = pad_token_id
        self.max_length = config.max_length
        self.out_dim = config.out_dim
        self.embed_dim = config.embed_dim
        self.normalize_embeddings = config.normalize_embeddings
        self.tok_encoder = nn.Embedding(vocab_size, config.embed_dim, padding_idx=pad_token_id)
        self.pos_encoder = (
            PositionTable(config.max_length, config.embed_dim) if config.pos_encoding else NoPositions()
        )
        self.dropout = nn.Dropout(config.dropout)
        self._init_pipeline(corruptible_token_mask)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.tok_encoder

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids -> (B, L, De) embeddings, the exact `inputs_embeds` equivalent of `input_ids`."""
        embeds = self.tok_encoder(input_ids)
        if self.normalize_embeddings:
            norm = embeds.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            embeds = embeds / norm * math.sqrt(self.embed_dim)
        return embeds

    def encode(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.run_encoder(self.dropout(self.pos_encoder(embeds, position_ids)), attention_mask)

    def run_encoder(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement run_encoder")


class PositionTable(nn.Module):
    """x (B, L, D) + pe[:, :L] (or + pe[0, position_ids] for position_ids (B, L)); `pe` (1, max_length + 1, D) is
    trainable and initialised sinusoidally."""

    def __init__(self, max_length: int, dim: int):
        super().__init__()
        self.pe = nn.Parameter(sinusoidal_table(max_length + 1, dim))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:
            return x + self.pe[:, : x.shape[1]]
        return x + self.pe[0, position_ids]  # (B, L, D)


class NoPositions(nn.Module):
    """The position encoder of a root configured without one (pos_encoding=False): returns x unchanged."""

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        return x


class TransformerRoot(NativeRoot):
    """Native transformer encoder (spec 2.3): blocks embed -> channel -> ... -> out (one block: embed -> out)."""

    def __init__(
        self, config: TransformerRootConfig, vocab_size: int, pad_token_id: int, corruptible_token_mask=None
    ):
        super().__init__(config, vocab_size, pad_token_id, corruptible_token_mask)
        widths = block_widths(config.embed_dim, config.channel_dim, config.out_dim, config.num_blocks)
        self.encoder = transformer_stack(widths, config)

    def run_encoder(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        for block in self.encoder:
            x = block(x, attention_mask)
        return x


class Conv1dRoot(NativeRoot):
    """Native dilated residual 1-D CNN (spec 2.2); blocks after the first use `dilation`."""

    def __init__(
        self, config: Conv1dRootConfig, vocab_size: int, pad_token_id: int, corruptible_token_mask=None
    ):
        super().__init__(config, vocab_size, pad_token_id, corruptible_token_mask)
        widths = block_widths(config.embed_dim, config.channel_dim, config.out_dim, config.num_blocks)
        last = len(widths) - 1
        self.encoder = nn.ModuleList(
            Conv1dResidBlock(
                w_in,
                w_out,
                config.kernel_size,
                layernorm=config.layernorm,
                dropout=config.dropout if index == last else 0.0,
                dilation=1 if index in (0, last) else config.dilation,
                mask_input=config.mask_block_input,
            )
            for index, (w_in, w_out) in enumerate(widths)
        )

    def receptive_radius(self) -> int:
        """Sum of the blocks' radii: embeddings, positions and dropout act per position."""
        return sum(block.receptive_radius for block in self.encoder)

    def run_encoder(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(x.dtype)
        x = x.transpose(1, 2)  # (B, C, L): convolutions run channel-first
        for block in self.encoder:
            x = block(x, mask)
        return x.transpose(1, 2).contiguous()


class HFRoot(Root):
    """Any transformers encoder; inputs always reach it as `inputs_embeds`, so the input_ids and inputs_embeds
    paths are the same computation (for ESM this skips the token-dropout rescaling of masked tokens)."""

    def __init__(
        self,
        config: HFRootConfig,
        load_pretrained: bool = True,
        corruptible_token_mask: torch.Tensor | None = None,
    ):
        super().__init__()
        hf_config = dict(config.hf_config)
        model_type = hf_config.pop("model_type")
        if load_pretrained and config.pretrained_path is not None:
            self.model = AutoModel.from_pretrained(config.pretrained_path, local_files_only=True)
        else:
            self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **hf_config))
        # Marks every weight initialised, so the tree's post_init never re-draws pretrained weights.
        for module in self.model.modules():
            module._is_hf_initialized = True
        if config.freeze:
            self.model.requires_grad_(False)
        model_config = self.model.config
        self.vocab_size = model_config.vocab_size
        pad = getattr(model_config, "pad_token_id", None)
        self.pad_token_id = 0 if pad is None else pad
        # ESM positions start after the padding index (padding_idx + 1 + i).
        offset = self.pad_token_id + 1 if model_type == "esm" else 0
        self.max_length = config.max_length or (model_config.max_position_embeddings - offset)
        self.out_dim = model_config.hidden_size
        self._init_pipeline(corruptible_token_mask)

    def restore_non_persistent_buffers(self) -> None:
        """Rebuilds the wrapped model's non-persistent buffers (e.g. BERT position_ids), which a state dict does not
        carry and meta-device loading leaves unset; weights are untouched."""
        persistent = set(self.model.state_dict())
        fresh = AutoModel.from_config(self.model.config)  # only its buffers are used
        for name, buffer in fresh.named_buffers():
            if name not in persistent:
                module_name, _, buffer_name = name.rpartition(".")
                owner = self.model.get_submodule(module_name) if module_name else self.model
                owner.register_buffer(
                    buffer_name, buffer.to(self.corruptible_token_mask.device), persistent=False
                )

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def encode(
        self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if position_ids is not None:
            raise ValueError(
                "hf roots take no position_ids (their models number positions in their own convention); "
                "expected position_ids=None"
            )
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state


def build_root(
    config: TransformerRootConfig | Conv1dRootConfig | HFRootConfig,
    vocab_size: int | None,
    pad_token_id: int | None,
    corruptible_token_mask: torch.Tensor | None,
    load_pretrained: bool,
) -> Root:
    """The root for a typed config. vocab_size / pad_token_id come from the root's tokenizer (native roots)."""
    if isinstance(config, HFRootConfig):
        return HFRoot(config, load_pretrained, corruptible_token_mask)
    root_class = TransformerRoot if isinstance(config, TransformerRootConfig) else Conv1dRoot
    return root_class(config, vocab_size, pad_token_id, corruptible_token_mask)


__all__ = [
    "CORRUPTION_TARGETS",
    "Conv1dRoot",
    "HFRoot",
    "IdentityCorruption",
    "Root",
    "RootOutput",
    "TransformerRoot",
    "build_root",
]
