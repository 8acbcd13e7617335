"""Exact pseudo-log-likelihood (PLL) of an MLM leaf by occlusion (spec 2.7), per position, with two exact savings
for trees of finite receptive radius R (`NeuralTreeModel.receptive_radius(root, leaf)`, e.g. conv roots and
branches):

* windowed: the term of position i, log p(x_i | x with x_i masked), depends on the tokens at [i - R, i + R] only,
  so it is read from a forward of the W = min(2R + 1, L) tokens around i (the window is shifted inside the
  sequence at its ends, so a window edge that is not a sequence edge lies R or more away from i; absolute
  positions travel as `position_ids`) instead of all L tokens: about L / W less compute per occlusion;
* incremental: a sequence that differs from its parent at positions E has the parent's terms at every position
  farther than R from E (`rescore_positions`); only the others need a forward.

With R = None (attention, hf roots) every occlusion is a full-length forward and a change rescores the whole row.
The PLL of a row is the mean of its terms over included positions (`pll_from_terms`).

Shape legend: N sequences, L padded length, W window, P (sequence, position) pairs, E members, V vocabulary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.inference_mode()
def pll_terms(
    model: nn.Module,
    root: str,
    leaf: str,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
    mask_token_id: int,
    radius: int | None,
    batch_tokens: int,
) -> torch.Tensor:
    """(N, L) float32: at each True of `positions` (N, L) bool, log p(x_j | x with x_j masked) from the MLM `leaf`,
    averaged over its members; 0 elsewhere. One occluded sequence (or window, for an int `radius`) per pair, in
    forwards of about `batch_tokens` tokens. The model must be in eval mode for windows to be exact (dropout)."""
    num, length = input_ids.shape
    if positions.shape != input_ids.shape:
        raise ValueError(
            f"positions has shape {tuple(positions.shape)}; expected the shape of input_ids {(num, length)}"
        )
    if radius is not None and radius < 0:
        raise ValueError(f"radius is {radius!r}; expected None or an int >= 0")
    width = length if radius is None else min(2 * radius + 1, length)
    windowed = width < length
    batch_size = max(1, batch_tokens // width)
    offsets = torch.arange(width, device=input_ids.device)  # (W,)
    pairs = positions.nonzero()  # (P, 2): sequence, occluded position
    terms = torch.zeros(num, length, dtype=torch.float32, device=input_ids.device)
    for start in range(0, pairs.shape[0], batch_size):
        row, position = pairs[start : start + batch_size].unbind(-1)  # (b,), (b,)
        index = torch.arange(row.shape[0], device=input_ids.device)
        # (b,) first column of each window (0 for full-length occlusions, where width = length)
        begin = (position - (radius or 0)).clamp(0, length - width)
        columns = begin[:, None] + offsets  # (b, W) absolute positions
        local = position - begin  # (b,) the occluded position inside its window
        occluded = input_ids[row[:, None], columns].index_put(
            (index, local), torch.full_like(local, mask_token_id)
        )
        inputs = {"input_ids": occluded, "attention_mask": attention_mask[row[:, None], columns]}
        if windowed:
            inputs["position_ids"] = columns
        logits = model(root_inputs={root: inputs}, leaves=[leaf]).leaf_outputs[leaf].logits  # (E, b, W, V)
        log_probs = torch.log_softmax(logits[:, index, local].float(), dim=-1)  # (E, b, V)
        target = input_ids[row, position]  # (b,)
        terms[row, position] = log_probs[:, index, target].mean(0)
    return terms


def rescore_positions(changed: torch.Tensor, radius: int | None) -> torch.Tensor:
    """(N, L) bool positions whose PLL term may differ from the parent's when the tokens at `changed` (N, L) bool
    differ: those within `radius` of a change, or the whole row of any change when `radius` is None."""
    if radius is None:
        return changed.any(-1, keepdim=True).expand_as(changed)
    near = F.max_pool1d(changed[:, None].float(), kernel_size=2 * radius + 1, stride=1, padding=radius)
    return near[:, 0] > 0


def pll_from_terms(terms: torch.Tensor, is_excluded: torch.Tensor) -> torch.Tensor:
    """(N,) mean of `terms` (N, L) over positions not in `is_excluded` (N, L) bool (0 for a row with none)."""
    included = ~is_excluded
    total = torch.where(included, terms, torch.zeros_like(terms)).sum(-1)
    return total / included.sum(-1).clamp_min(1).to(terms.dtype)


__all__ = ["pll_from_terms", "pll_terms", "rescore_positions"]
