"""Branches: per-task-group heads on the trunk features, each an ensemble of `ensemble_size` members.

A branch maps trunk features (B, L, D) to per-member features (E, B, L, D_out) and pooled features (E, B, D_out);
members share the trunk and nothing else. The ensemble is a leading tensor dim, never a key suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from cortex.model.configuration_neural_tree import (
    Conv1dBranchConfig,
    MLPBranchConfig,
    TransformerBranchConfig,
)
from cortex.model.layers import Conv1dResidBlock, block_widths, build_pooling, transformer_stack


@dataclass
class BranchOutput(ModelOutput):
    """last_hidden_state (E, B, L, D); pooled (E, B, D); attention_mask (B, L) long (the trunk's)."""

    last_hidden_state: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


def _branch_widths(
    config: Conv1dBranchConfig | TransformerBranchConfig, in_dim: int
) -> list[tuple[int, int]]:
    """(in, out) widths of the branch's blocks; none for num_blocks = 0."""
    if config.num_blocks == 0:
        return []
    return block_widths(in_dim, config.channel_dim, config.out_dim, config.num_blocks)


def _zero_block_projection(config: Conv1dBranchConfig | TransformerBranchConfig, in_dim: int) -> nn.Module:
    """num_blocks = 0, as the original (spec 2.6): identity, or a bias-free Linear(in, out) when widths differ."""
    if config.num_blocks == 0 and in_dim != config.out_dim:
        return nn.Linear(in_dim, config.out_dim, bias=False)
    return nn.Identity()


class Conv1dBranchMember(nn.Module):
    """Conv1d residual blocks on (B, L, D) features (channel-first inside), then pooling."""

    def __init__(self, config: Conv1dBranchConfig, in_dim: int, max_length: int | None = None):
        super().__init__()
        widths = _branch_widths(config, in_dim)
        last = len(widths) - 1
        self.projection = _zero_block_projection(config, in_dim)
        self.encoder = nn.ModuleList(
            Conv1dResidBlock(
                w_in,
                w_out,
                config.kernel_size,
                layernorm=config.layernorm,
                dropout=config.dropout if index == last else 0.0,
                mask_input=config.mask_block_input,
            )
            for index, (w_in, w_out) in enumerate(widths)
        )
        self.pooling = build_pooling(
            config.pooling, config.out_dim, config.num_pooling_heads, max_length=max_length
        )

    def receptive_radius(self) -> int:
        """Radius of the per-position features: the sum of the blocks' radii (0 without blocks)."""
        return sum(block.receptive_radius for block in self.encoder)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = attention_mask.to(x.dtype)
        h = self.projection(x).transpose(1, 2)  # (B, C, L)
        for block in self.encoder:
            h = block(h, mask)
        h = h.transpose(1, 2)
        return h, self.pooling(h, attention_mask)


class TransformerBranchMember(nn.Module):
    """Transformer blocks on (B, L, D), then pooling."""

    def __init__(self, config: TransformerBranchConfig, in_dim: int, max_length: int | None = None):
        super().__init__()
        widths = _branch_widths(config, in_dim)
        self.projection = _zero_block_projection(config, in_dim)
        self.encoder = transformer_stack(widths, config)
        self.pooling = build_pooling(
            config.pooling,
            config.out_dim,
            config.num_pooling_heads,
            mask_padding=config.mask_padding_in_attention,
            max_length=max_length,
        )

    def receptive_radius(self) -> int | None:
        """0 without blocks (a per-position projection); None (global) with attention blocks."""
        return 0 if len(self.encoder) == 0 else None

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.projection(x)
        for block in self.encoder:
            x = block(x, attention_mask)
        return x, self.pooling(x, attention_mask)


class MLPBranchMember(nn.Module):
    """Per-position MLP: num_layers x [Linear(., hidden_dim), GELU, Dropout] then Linear(., out_dim); pooling."""

    def __init__(self, config: MLPBranchConfig, in_dim: int, max_length: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(config.num_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout)]
            width = config.hidden_dim
        layers.append(nn.Linear(width, config.out_dim))
        self.encoder = nn.Sequential(*layers)
        self.pooling = build_pooling(
            config.pooling, config.out_dim, config.num_pooling_heads, max_length=max_length
        )

    def receptive_radius(self) -> int:
        """0: the MLP acts per position."""
        return 0

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.pooling(h, attention_mask)


MEMBER_CLASSES: dict[type, type] = {
    Conv1dBranchConfig: Conv1dBranchMember,
    TransformerBranchConfig: TransformerBranchMember,
    MLPBranchConfig: MLPBranchMember,
}


class Branch(nn.Module):
    """`ensemble_size` independent members of one branch type; forward stacks their outputs along dim 0.
    max_length: the longest trunk input (positions), needed by "position_weighted" pooling."""

    def __init__(
        self,
        config: Conv1dBranchConfig | TransformerBranchConfig | MLPBranchConfig,
        in_dim: int,
        max_length: int | None = None,
    ):
        super().__init__()
        self.ensemble_size = config.ensemble_size
        self.out_dim = config.out_dim
        member_class = MEMBER_CLASSES[type(config)]
        self.members = nn.ModuleList(
            member_class(config, in_dim, max_length) for _ in range(config.ensemble_size)
        )

    def receptive_radius(self) -> int | None:
        """R such that every member's per-position features (`last_hidden_state`) at i depend on the trunk
        features only at [i - R, i + R]; None when global. `pooled` is always global. Members share one config,
        so the first member answers for all."""
        return self.members[0].receptive_radius()

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> BranchOutput:
        """hidden_states (B, L, D), attention_mask (B, L) -> BranchOutput with leading ensemble dim E."""
        outputs = [member(hidden_states, attention_mask) for member in self.members]
        return BranchOutput(
            last_hidden_state=torch.stack([features for features, _ in outputs]),
            pooled=torch.stack([pooled for _, pooled in outputs]),
            attention_mask=attention_mask,
        )
