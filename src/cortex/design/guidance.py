"""The pure math of one LaMBO-2 step: where to edit, how much to noise, and the guidance loss.

Gruver et al., "Protein design with guided discrete diffusion", NeurIPS 2023 (arXiv 2305.20009); the
original cortex `LaMBO.step` (spec 7.2) and `cortex.attribution.approximate_occlusion` (spec 8.1).
These functions hold no model: the sampler (`cortex.design.lambo`) runs the forwards and calls them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def approximate_occlusion(
    grad: torch.Tensor, inputs_embeds: torch.Tensor, null_embedding: torch.Tensor, is_excluded: torch.Tensor
) -> torch.Tensor:
    """First-order (Taylor) estimate of the objective change when a position's embedding becomes the null one.

    score[b, l] = sum_d grad[b, l, d] * (null_embedding[d] - inputs_embeds[b, l, d]), and -inf where excluded.

    Args:
        grad: (B, L, D) gradient of the summed objective with respect to `inputs_embeds`.
        inputs_embeds: (B, L, D) the embeddings the gradient was taken at.
        null_embedding: (D,) embedding of the null (mask) token. The original passes the RAW embedding row
            while `inputs_embeds` are L2-normalised x sqrt(D) (quirk A18); callers choose which to pass.
        is_excluded: (B, L) bool, True where a position may not be edited.

    Returns:
        (B, L) scores, same dtype as `grad`.
    """
    if grad.shape != inputs_embeds.shape or grad.dim() != 3:
        raise ValueError(
            f"approximate_occlusion: grad {tuple(grad.shape)} and inputs_embeds {tuple(inputs_embeds.shape)} "
            "must have the same (B, L, D) shape"
        )
    if null_embedding.shape != (grad.shape[-1],):
        raise ValueError(
            f"approximate_occlusion: null_embedding has shape {tuple(null_embedding.shape)}; "
            f"expected ({grad.shape[-1]},)"
        )
    if is_excluded.dtype != torch.bool or is_excluded.shape != grad.shape[:2]:
        raise ValueError(
            f"approximate_occlusion: is_excluded has shape {tuple(is_excluded.shape)} and dtype "
            f"{is_excluded.dtype}; expected bool {tuple(grad.shape[:2])}"
        )
    scores = (grad * (null_embedding - inputs_embeds)).sum(dim=-1)  # (B, L)
    return scores.masked_fill(is_excluded, -math.inf)


def normalize_saliency(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scales each row by the L1 norm of its finite entries: s / (sum_l |s_l| over finite s_l + eps).

    scores: (B, L) with -inf at excluded positions (kept as -inf). Returns (B, L).
    """
    finite = torch.isfinite(scores)
    norm = torch.where(finite, scores.abs(), torch.zeros_like(scores)).sum(dim=-1, keepdim=True)  # (B, 1)
    return scores / (norm + eps)


def edit_position_probs(saliency: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, L) probabilities softmax(saliency / temperature) over positions; -inf saliency gets probability 0.

    A row whose saliency is -inf everywhere (nothing editable) has no distribution: it yields NaN, and
    `sample_edit_positions` rejects it.
    """
    if not temperature > 0:
        raise ValueError(f"edit_position_probs temperature must be > 0, got {temperature!r}")
    return torch.softmax(saliency / temperature, dim=-1)


def sample_edit_positions(
    probs: torch.Tensor, num_positions: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draws `num_positions` distinct positions per row with `torch.multinomial` (without replacement).

    Args:
        probs: (B, L) non-negative position probabilities (rows need not be normalised).
        num_positions: positions per row; every row needs at least this many non-zero probabilities.
        generator: RNG; with a generator seeded like the original's global generator the draw is identical.

    Returns:
        (B, num_positions) int64 positions, sorted ascending within each row.
    """
    if probs.dim() != 2:
        raise ValueError(f"sample_edit_positions: probs has shape {tuple(probs.shape)}; expected (B, L)")
    if not isinstance(num_positions, int) or not 1 <= num_positions <= probs.shape[-1]:
        raise ValueError(
            f"sample_edit_positions: num_positions must be an int in [1, {probs.shape[-1]}], got {num_positions!r}"
        )
    # Host sync on purpose: design steps are not compiled, and a clear error beats torch's generic one.
    available = ((probs > 0) & torch.isfinite(probs)).sum(dim=-1)
    short = (available < num_positions).nonzero()
    if short.numel() > 0:
        row = int(short[0, 0])
        raise ValueError(
            f"sample_edit_positions: row {row} has {int(available[row])} editable positions with non-zero "
            f"probability; expected at least num_positions={num_positions}"
        )
    positions = torch.multinomial(probs, num_positions, replacement=False, generator=generator)
    return positions.sort(dim=-1).values


def positions_to_mask(positions: torch.Tensor, length: int) -> torch.Tensor:
    """(B, K) int positions -> (B, length) bool one-hot mask of those positions."""
    mask = torch.zeros(positions.shape[0], length, dtype=torch.bool, device=positions.device)
    return mask.scatter(1, positions, True)


def reference_token_probs(
    logits: torch.Tensor, is_samplable: torch.Tensor, min_prob: float = 1e-6
) -> torch.Tensor:
    """The frozen unguided distribution of spec 7.2 step 10: softmax over samplable tokens, clamped below.

    logits: (B, L, V); is_samplable: (V,) bool. Returns (B, L, V) = softmax(logits with non-samplable ids set to
    -inf).detach().clamp_min(min_prob) (not renormalised; `guidance_loss` normalises it like Categorical).
    """
    if is_samplable.shape != logits.shape[-1:]:
        raise ValueError(
            f"reference_token_probs: is_samplable has shape {tuple(is_samplable.shape)}; expected ({logits.shape[-1]},)"
        )
    masked = logits.masked_fill(~is_samplable, -math.inf)
    return torch.softmax(masked, dim=-1).detach().clamp_min(min_prob)


@dataclass
class GuidanceLoss:
    """Terms of the LaMBO-2 design loss (all 0-d tensors).

    loss = kl_weight * kl + (1 - kl_weight) * objective_loss; objective_loss = -mean objective;
    kl = mean over corrupted positions of KL(guided || reference); entropy = mean guided entropy there.
    """

    loss: torch.Tensor
    kl: torch.Tensor
    objective_loss: torch.Tensor
    entropy: torch.Tensor


def guidance_loss(
    guided_logits: torch.Tensor,
    base_probs: torch.Tensor,
    objective: torch.Tensor,
    is_corrupted: torch.Tensor,
    kl_weight: float,
) -> GuidanceLoss:
    """The design loss minimised over the guidance offset delta (spec 7.2 step 10).

    Args:
        guided_logits: (B, L, V) token logits of the guided forward (no token banned).
        base_probs: (B, L, V) reference probabilities (e.g. `reference_token_probs`), normalised per position
            here like `torch.distributions.Categorical(probs=...)`.
        objective: (B,) objective of the guided forward (higher is better).
        is_corrupted: (B, L) bool, the positions the KL averages over. With none corrupted the KL is 0.
        kl_weight: in [0, 1].
    """
    if not 0.0 <= kl_weight <= 1.0:
        raise ValueError(f"guidance_loss kl_weight must be in [0, 1], got {kl_weight!r}")
    if guided_logits.shape != base_probs.shape or guided_logits.dim() != 3:
        raise ValueError(
            f"guidance_loss: guided_logits {tuple(guided_logits.shape)} and base_probs {tuple(base_probs.shape)} "
            "must have the same (B, L, V) shape"
        )
    if is_corrupted.shape != guided_logits.shape[:2] or objective.shape != guided_logits.shape[:1]:
        raise ValueError(
            f"guidance_loss: is_corrupted {tuple(is_corrupted.shape)} must be {tuple(guided_logits.shape[:2])} "
            f"and objective {tuple(objective.shape)} must be ({guided_logits.shape[0]},)"
        )
    log_p = torch.log_softmax(guided_logits, dim=-1)  # (B, L, V)
    p = log_p.exp()
    q = base_probs / base_probs.sum(dim=-1, keepdim=True)
    tiny = torch.finfo(q.dtype).eps
    log_q = q.clamp(min=tiny, max=1 - tiny).log()  # as Categorical's probs_to_logits
    kl_per_position = (p * (log_p - log_q)).sum(dim=-1)  # (B, L)
    entropy_per_position = -(p * log_p).sum(dim=-1)  # (B, L)
    weight = is_corrupted.to(kl_per_position.dtype)
    count = weight.sum().clamp_min(1.0)
    kl = (kl_per_position * weight).sum() / count
    entropy = (entropy_per_position * weight).sum() / count
    objective_loss = -objective.mean()
    loss = kl_weight * kl + (1.0 - kl_weight) * objective_loss
    return GuidanceLoss(loss=loss, kl=kl, objective_loss=objective_loss, entropy=entropy)


class InverseSqrtSchedule:
    """Noise level of design step k: 1 / sqrt(1 + k) (the original LaMBO: 1, 0.707, 0.577, 0.5, ...)."""

    def __call__(self, step: int) -> float:
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"design step must be a non-negative int, got {step!r}")
        return 1.0 / math.sqrt(1.0 + step)


class LinearSchedule:
    """Noise level falling linearly from `start` at step 0 to `end` at `num_steps`, constant afterwards."""

    def __init__(self, start: float = 1.0, end: float = 0.1, num_steps: int = 10):
        for name, value in (("start", start), ("end", end)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"LinearSchedule {name} must be in [0, 1], got {value!r}")
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"LinearSchedule num_steps must be a positive int, got {num_steps!r}")
        self.start, self.end, self.num_steps = float(start), float(end), num_steps

    def __call__(self, step: int) -> float:
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"design step must be a non-negative int, got {step!r}")
        fraction = min(step, self.num_steps) / self.num_steps
        return self.start + (self.end - self.start) * fraction
