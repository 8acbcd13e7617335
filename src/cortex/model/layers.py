"""Blocks shared by several node types: normalisation, convolution and transformer blocks, pooling.

Blocks exchange plain tensors; masks are `attention_mask` (B, L) with 1 = real token. Where the original cortex
(spec section 2.1) has a quirk that changes numerics, the block takes an explicit flag whose default is the fixed
behaviour and whose other value reproduces the original for checkpoint parity:

* `Conv1dResidBlock(mask_input=True)`: the block input is multiplied by the mask (fixes A4, pads leaking into
  real positions through "same" convolutions); `mask_input=False` is the original.
* `TransformerBlock(block="pre_ln")`: out = h + MLP(LN2(h)), h = r + Attn(LN1(r)); `block="cortex_v1"` is the
  original out = r' + MLP(LN2(r + Attn(LN1(r)))) (A1).
* `SelfAttention(mask_padding=True)`: pad keys are excluded; `False` attends to pads like the original (A2).
* `AttentionPooling(mask_padding=True)`: pooled query averages real positions and pad keys are excluded;
  `False` reproduces the original's +1 score bias on real keys and the query sum over all positions (A2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_TYPES: tuple[str, ...] = ("pre_ln", "cortex_v1")
POOLING_TYPES: tuple[str, ...] = ("mean", "max", "weighted_mean", "attention", "position_weighted")


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """(1, num_positions, dim) table: pe[p, 2i] = sin(p w_i), pe[p, 2i + 1] = cos(p w_i), w_i = 10000^(-2i/dim)."""
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal positions need an even width; got {dim}")
    position = torch.arange(num_positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table[None]


def block_widths(in_dim: int, channel_dim: int, out_dim: int, num_blocks: int) -> list[tuple[int, int]]:
    """(in, out) widths of a stack: one block in -> out; else in -> channel, channel -> channel, channel -> out."""
    if num_blocks == 1:
        return [(in_dim, out_dim)]
    return (
        [(in_dim, channel_dim)] + [(channel_dim, channel_dim)] * (num_blocks - 2) + [(channel_dim, out_dim)]
    )


class MaskLayerNorm1d(nn.Module):
    """LayerNorm over channels of channel-first (B, C, L) features, as the original (spec 2.1, A3).

    std = sqrt(max(E[x^2] - E[x]^2, eps)) (clamp, then square root; one-pass variance). weight/bias are (C, 1).
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels, 1))
        self.bias = nn.Parameter(torch.zeros(num_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-2, keepdim=True)  # (B, 1, L)
        var = (x * x).mean(dim=-2, keepdim=True) - mean * mean
        std = var.clamp_min(self.eps).sqrt()
        return (x - mean) * (self.weight / std) + self.bias


def same_padding_radius(kernel_size: int, dilation: int = 1) -> int:
    """Farthest offset (in positions, either side) that a "same"-padded Conv1d output reads from its input:
    ceil(dilation * (kernel_size - 1) / 2) (PyTorch puts the odd extra pad of an even kernel on the right)."""
    return -(-dilation * (kernel_size - 1) // 2)


class Conv1dResidBlock(nn.Module):
    """Residual block of two "same" 1-D convolutions on channel-first features (spec 2.1).

    forward(x (B, C_in, L), mask (B, L) float 0/1) -> (B, C_out, L):
    x' = conv_1(swish(norm_1(x))) * m; x' = conv_2(swish(norm_2(x'))) * m; out = dropout(x' + proj(x)).
    With `mask_input` the input is multiplied by the mask first, so pad features never reach real positions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        layernorm: bool = True,
        dropout: float = 0.0,
        dilation: int = 1,
        mask_input: bool = True,
    ):
        super().__init__()
        self.mask_input = mask_input
        # Kept here, not read from conv_1, which LoRA may wrap (cortex.peft).
        self.kernel_size, self.dilation = kernel_size, dilation
        self.conv_1 = nn.Conv1d(
            in_channels, out_channels, kernel_size, padding="same", bias=False, dilation=dilation
        )
        self.conv_2 = nn.Conv1d(
            out_channels, out_channels, kernel_size, padding="same", bias=False, dilation=dilation
        )
        self.norm_1 = MaskLayerNorm1d(in_channels) if layernorm else nn.Identity()
        self.norm_2 = MaskLayerNorm1d(out_channels) if layernorm else nn.Identity()
        self.proj = (
            nn.Conv1d(in_channels, out_channels, 1, bias=True)
            if in_channels != out_channels
            else nn.Identity()
        )
        self.dropout = nn.Dropout(dropout)

    @property
    def receptive_radius(self) -> int:
        """Output position i reads inputs only at [i - R, i + R]: two convolutions; norms, masks and the
        projection act per position."""
        return 2 * same_padding_radius(self.kernel_size, self.dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None, :]  # (B, 1, L)
        if self.mask_input:
            x = x * m
        h = self.conv_1(F.silu(self.norm_1(x))) * m
        h = self.conv_2(F.silu(self.norm_2(h))) * m
        return self.dropout(h + self.proj(x))


class MLP(nn.Module):
    """Linear(D, 4D) -> exact GELU -> Linear(4D, D_out) -> Dropout, as the original transformer MLP."""

    def __init__(self, in_dim: int, out_dim: int | None = None, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        out_dim = in_dim if out_dim is None else out_dim
        self.net = nn.Sequential(
            nn.Linear(in_dim, 4 * in_dim, bias=bias),
            nn.GELU(),
            nn.Linear(4 * in_dim, out_dim, bias=bias),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, dim = x.shape
    return x.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)  # (B, H, L, D/H)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # (B, L, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused q/k/v (c_attn) and output projection (c_proj).

    forward(x (B, L, D), attention_mask (B, L)) -> (B, L, D). `mask_padding` excludes pad keys (queries at pads
    still attend to real keys, so no row is empty); `is_causal` adds the lower-triangular mask.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        bias: bool = False,
        dropout: float = 0.0,
        is_causal: bool = False,
        mask_padding: bool = True,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.is_causal = is_causal
        self.mask_padding = mask_padding
        self.dropout_p = dropout
        self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.num_heads) for t in self.c_attn(x).chunk(3, dim=-1))
        length = x.shape[1]
        allowed = torch.ones(x.shape[0], 1, length, length, dtype=torch.bool, device=x.device)
        if self.mask_padding:
            allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, 1, 1, L) keys
        if self.is_causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
        # Every query may attend to itself, so no row is empty (a pad query under causal left padding).
        allowed = allowed | torch.eye(length, dtype=torch.bool, device=x.device)
        dropout_p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
        return self.dropout(self.c_proj(_merge_heads(out)))


class TransformerBlock(nn.Module):
    """Transformer block (B, L, D_in) -> (B, L, D_out); see the module docstring for `block`."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_heads: int = 4,
        bias: bool = False,
        dropout: float = 0.0,
        is_causal: bool = False,
        block: str = "pre_ln",
        mask_padding: bool = True,
    ):
        super().__init__()
        if block not in BLOCK_TYPES:
            raise ValueError(f"unknown transformer block {block!r}; expected one of {BLOCK_TYPES}")
        self.legacy = block == "cortex_v1"
        self.ln_1 = nn.LayerNorm(in_dim, bias=False)
        self.attn = SelfAttention(in_dim, num_heads, bias, dropout, is_causal, mask_padding)
        self.ln_2 = nn.LayerNorm(in_dim, bias=False)
        self.mlp = MLP(in_dim, out_dim, bias, dropout)
        self.proj = nn.Linear(in_dim, out_dim, bias=bias) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = x + self.attn(self.ln_1(x), attention_mask)
        # cortex_v1 (A1): the attention output reaches the output only through the MLP.
        residual = self.proj(x) if self.legacy else self.proj(h)
        return residual + self.mlp(self.ln_2(h))


class MeanPooling(nn.Module):
    """(B, L, D), mask (B, L) -> (B, D): mean over real positions (0 for a row without any)."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.to(x.dtype)[..., None]  # (B, L, 1)
        return (x * weights).sum(-2) / weights.sum(-2).clamp_min(1.0)


class MaxPooling(nn.Module):
    """(B, L, D), mask (B, L) -> (B, D): per-channel max over real positions (0 for a row without any).

    Global max pooling makes each channel a motif detector that fires wherever the motif is (DeepBind, Alipanahi
    et al. 2015): the natural readout for objectives that take the best placement of a pattern, such as Ehrlich
    functions' max over motif offsets. Padding never wins: pad positions are set to the dtype's lowest value
    before the max (a where, not a branch, so one graph serves every mask)."""

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        real = attention_mask.bool()[..., None]  # (B, L, 1)
        lowest = torch.finfo(x.dtype).min
        pooled = x.masked_fill(~real, lowest).amax(dim=-2)  # (B, D)
        return pooled.masked_fill(~real.any(dim=-2), 0.0)


class WeightedMeanPooling(nn.Module):
    """(B, L, D) -> (B, D): per-channel softmax over real positions of Linear(D, D)(x), then the weighted sum."""

    def __init__(self, dim: int):
        super().__init__()
        self.encoder = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores = self.encoder(x).masked_fill(~attention_mask.bool()[..., None], float("-inf"))
        return (scores.softmax(dim=-2) * x).sum(-2)


class PositionWeightedPooling(nn.Module):
    """(B, L, D), mask (B, L) -> (B, D): sum over real positions l of weight[l] * x[l]; weight (max_length, D).

    A site-specific readout for aligned sequences (deep mutational scans: position l is the same site in every
    row). Mean pooling of a translation-equivariant encoder gives a mutation nearly the same effect at every site;
    with it a conv tree underfit avGFP (train and validation Spearman 0.21, bench/train_gfp.py); with this
    pooling the same tree reached validation / test Spearman 0.78 / 0.685 (one-hot ridge 0.81 / 0.70).
    Init N(0, 1 / max_length) keeps the pooled sum O(1)."""

    def __init__(self, max_length: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_length, dim) / math.sqrt(max_length))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask.to(x.dtype)[..., None] * self.weight[: x.shape[-2]]  # (B, L, D)
        return (x * weights).sum(-2)


class AttentionPooling(nn.Module):
    """(B, L, D) -> (B, D): LayerNorm, then one pooled query per head (the mean of the queries) attends over L.

    With `mask_padding` the query is the mean over real positions and pad keys are excluded; otherwise the
    original (A2): the query sums all positions divided by the real count and real keys get +1 added to scores.
    """

    def __init__(
        self, dim: int, num_heads: int, bias: bool = False, dropout: float = 0.0, mask_padding: bool = True
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"attention pooling width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.mask_padding = mask_padding
        self.norm = nn.LayerNorm(dim, bias=False)
        self.c_attn = nn.Linear(dim, 3 * dim, bias=bias)
        self.c_proj = nn.Linear(dim, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.num_heads) for t in self.c_attn(self.norm(x)).chunk(3, dim=-1))
        mask = attention_mask.to(x.dtype)  # (B, L)
        count = mask.sum(-1).clamp_min(1.0)[:, None, None, None]
        if self.mask_padding:
            query = (q * mask[:, None, :, None]).sum(-2, keepdim=True) / count  # (B, H, 1, hd)
            bias = torch.zeros_like(mask).masked_fill(~attention_mask.bool(), float("-inf"))
        else:
            query = q.sum(-2, keepdim=True) / count
            bias = mask
        out = F.scaled_dot_product_attention(query, k, v, attn_mask=bias[:, None, None, :])
        return self.dropout(self.c_proj(_merge_heads(out)))[:, 0]  # (B, D)


def transformer_stack(widths: list[tuple[int, int]], config) -> nn.ModuleList:
    """TransformerBlocks for (in, out) `widths`, configured by a transformer root or branch config
    (num_heads, dropout, is_causal, block, mask_padding_in_attention)."""
    return nn.ModuleList(
        TransformerBlock(
            w_in,
            w_out,
            config.num_heads,
            dropout=config.dropout,
            is_causal=config.is_causal,
            block=config.block,
            mask_padding=config.mask_padding_in_attention,
        )
        for w_in, w_out in widths
    )


def build_pooling(
    pooling: str, dim: int, num_heads: int = 4, mask_padding: bool = True, max_length: int | None = None
) -> nn.Module:
    """The pooling module named `pooling` (one of POOLING_TYPES) for width `dim`; "position_weighted" needs
    `max_length` (the longest input, in positions)."""
    if pooling == "mean":
        return MeanPooling()
    if pooling == "max":
        return MaxPooling()
    if pooling == "weighted_mean":
        return WeightedMeanPooling(dim)
    if pooling == "attention":
        return AttentionPooling(dim, num_heads, mask_padding=mask_padding)
    if pooling == "position_weighted":
        if max_length is None or max_length < 1:
            raise ValueError(f"position_weighted pooling needs max_length >= 1 (positions); got {max_length}")
        return PositionWeightedPooling(max_length, dim)
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLING_TYPES}")
