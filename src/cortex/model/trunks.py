"""How roots are merged: the trunk turns every root's features into one (B, L, D) sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from cortex.model.configuration_neural_tree import ConcatTrunkConfig, SumTrunkConfig


@dataclass
class TrunkOutput(ModelOutput):
    """last_hidden_state (B, L, D); attention_mask (B, L) long, the OR of the roots' masks."""

    last_hidden_state: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None


def _merged_mask(root_masks: list[torch.Tensor]) -> torch.Tensor:
    mask = root_masks[0].bool()
    for other in root_masks[1:]:
        mask = mask | other.bool()
    return mask.long()


def _check_lengths(features: list[torch.Tensor]) -> None:
    shapes = [tuple(f.shape[:2]) for f in features]
    if len(set(shapes)) > 1:
        raise ValueError(f"trunk roots must share (B, L); got {shapes}")


class SumTrunk(nn.Module):
    """Sum of root features; roots narrower or wider than out_dim pass a bias-free Linear first (fixes A21)."""

    def __init__(self, config: SumTrunkConfig, in_dims: list[int], out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.root_projections = nn.ModuleList(
            nn.Linear(d, out_dim, bias=False) if d != out_dim else nn.Identity() for d in in_dims
        )

    def forward(self, features: list[torch.Tensor], masks: list[torch.Tensor]) -> TrunkOutput:
        """features: per root (B, L, D_r) in trunk order; masks: per root (B, L)."""
        _check_lengths(features)
        total = self.root_projections[0](features[0])
        for projection, feature in zip(self.root_projections[1:], features[1:]):
            total = total + projection(feature)
        return TrunkOutput(last_hidden_state=total, attention_mask=_merged_mask(masks))


class ConcatTrunk(nn.Module):
    """Root features concatenated along features (B, L, sum D_r), then Linear(sum D_r, out_dim)."""

    def __init__(self, config: ConcatTrunkConfig, in_dims: list[int], out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.projection = nn.Linear(sum(in_dims), out_dim)

    def forward(self, features: list[torch.Tensor], masks: list[torch.Tensor]) -> TrunkOutput:
        _check_lengths(features)
        merged = self.projection(torch.cat(features, dim=-1))
        return TrunkOutput(last_hidden_state=merged, attention_mask=_merged_mask(masks))


def build_trunk(config: SumTrunkConfig | ConcatTrunkConfig, in_dims: list[int], out_dim: int) -> nn.Module:
    trunk_class = SumTrunk if isinstance(config, SumTrunkConfig) else ConcatTrunk
    return trunk_class(config, in_dims, out_dim)
