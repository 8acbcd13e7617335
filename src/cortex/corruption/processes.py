"""How noise is added: corruption processes shared by training (roots) and design (LaMBO-2).

Every process is an `nn.Module` with one interface (docs/architecture.md):

    add_noise(x, noise_level (B,), is_corruptible (B, L) bool, generator=None) -> (noisy, is_corrupted (B, L))

and an attribute `acts_on` ("ids": x is (B, L) token ids; "embeds": x is (B, L, De) embeddings). Noise level 0
is the identity. The ops are the same at every noise level (no `.item()`, no branch on tensor values), so
`torch.compile(add_noise, fullgraph=True)` traces one graph for all levels. Schedules, matrices and tables are
non-persistent buffers: attaching a process never changes a state dict.

Every process also owns a `TimestepSampler` (`sample_noise_level(batch_size, generator)`) with the original's
Beta(3, 1) timestep distribution, so training code asks the process for per-example noise levels.

RNG note: the draws follow the original's call order (spec 5.3-5.5, Appendix B), so a `torch.Generator`
seeded like the original's global generator reproduces its masks bit for bit. `torch.compile` does not accept
a `generator` argument (dynamo limitation): compiled callers pass `generator=None` (global RNG).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from cortex.corruption.blosum import vocab_transition_matrix
from cortex.corruption.schedules import TimestepSampler
from cortex.data.tokenization import token_masks


def _check_inputs(
    process: str, x: torch.Tensor, noise_level: torch.Tensor, is_corruptible: torch.Tensor, x_ndim: int
) -> None:
    # Shape and dtype checks only (static under torch.compile), never on values.
    if x.dim() != x_ndim:
        expected = "(B, L) token ids" if x_ndim == 2 else "(B, L, D) embeddings"
        raise ValueError(f"{process}.add_noise: x has shape {tuple(x.shape)}; expected {expected}")
    if is_corruptible.dtype != torch.bool or tuple(is_corruptible.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"{process}.add_noise: is_corruptible has shape {tuple(is_corruptible.shape)} and dtype "
            f"{is_corruptible.dtype}; expected a bool tensor of shape {tuple(x.shape[:2])}"
        )
    if noise_level.dim() != 1 or noise_level.shape[0] != x.shape[0] or not noise_level.is_floating_point():
        raise ValueError(
            f"{process}.add_noise: noise_level has shape {tuple(noise_level.shape)} and dtype {noise_level.dtype}; "
            f"expected a float tensor of shape ({x.shape[0]},), one level in [0, 1] per example"
        )


def _uniform(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """U[0, 1) float64 draws, the same numbers as `torch.rand(shape, dtype=float64, generator=generator)` (which
    is empty().uniform_()); `torch.rand(..., generator=None)` cannot trace symbolic (dynamic) sizes."""
    return torch.empty(shape, dtype=torch.float64, device=device).uniform_(generator=generator)


class CorruptionProcess(nn.Module):
    """Base of the corruption processes: holds the timestep sampler. Subclasses implement `add_noise`."""

    acts_on: str = "ids"

    def __init__(
        self,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        concentration1: float = 3.0,
        concentration0: float = 1.0,
    ):
        super().__init__()
        self.timestep_sampler = TimestepSampler(schedule, num_timesteps, concentration1, concentration0)

    def sample_noise_level(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(batch_size,) float64 per-example noise levels drawn like the original (spec 5.2)."""
        return self.timestep_sampler.sample_noise_level(batch_size, generator=generator, device=device)

    def add_noise(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        is_corruptible: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement add_noise")

    def forward(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        is_corruptible: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.add_noise(x, noise_level, is_corruptible, generator)


class MaskCorruption(CorruptionProcess):
    """Absorbing-state corruption (spec 5.3): each corruptible token becomes `mask_token_id` with
    probability noise_level (independently per position).

    is_corrupted = (u < noise_level[:, None]) & is_corruptible with u ~ U[0, 1) float64 (B, L), the original's
    `rand_like(x_start, float64)` draw. Noise level 0 never corrupts (u >= 0); level 1 corrupts every
    corruptible position.
    """

    acts_on = "ids"

    def __init__(self, mask_token_id: int, **sampler_kwargs):
        super().__init__(**sampler_kwargs)
        if not isinstance(mask_token_id, int) or isinstance(mask_token_id, bool) or mask_token_id < 0:
            raise ValueError(
                f"MaskCorruption mask_token_id must be a non-negative int, got {mask_token_id!r}"
            )
        self.mask_token_id = mask_token_id

    def add_noise(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        is_corruptible: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, L) int ids -> (noisy_ids (B, L), is_corrupted (B, L) bool)."""
        _check_inputs("MaskCorruption", x, noise_level, is_corruptible, x_ndim=2)
        u = _uniform(x.shape, x.device, generator)  # (B, L)
        is_corrupted = (u < noise_level[:, None]) & is_corruptible
        noisy = torch.where(is_corrupted, torch.full_like(x, self.mask_token_id), x)
        return noisy, is_corrupted


class SubstitutionCorruption(CorruptionProcess):
    """Substitution corruption (spec 5.5): each corruptible token is replaced, with probability noise_level,
    by a token drawn from its row of `transition` (V, V) (row = from-token, P[i, j] = P(i -> j)).

    Tokens listed as not corruptible (`token_is_corruptible` False, (V,)) are never selected; the BLOSUM62
    matrix instead gives non-amino-acid tokens identity rows, which select but never change them (as the
    original, which excludes no ids there).

    Sampling is vectorised with static shapes: one exponential draw E (B*L, V) and
    new = argmax_j P[x, j] / E[rank, j], where rank is the position's index among the corrupted positions in
    row-major order. This is exactly what the original's `torch.multinomial(P[x[is_corrupted]], 1)` computes
    (torch's single-sample multinomial is argmax(p / Exp(1)), drawn row by row), so seeded results match the
    original while the graph has no data-dependent shape.
    """

    acts_on = "ids"
    transition: torch.Tensor
    token_is_corruptible: torch.Tensor

    def __init__(
        self, transition: torch.Tensor, token_is_corruptible: torch.Tensor | None = None, **sampler_kwargs
    ):
        super().__init__(**sampler_kwargs)
        transition = torch.as_tensor(transition)
        if transition.dim() != 2 or transition.shape[0] != transition.shape[1] or transition.shape[0] < 2:
            raise ValueError(
                f"SubstitutionCorruption transition has shape {tuple(transition.shape)}; expected (V, V), V >= 2"
            )
        if not transition.is_floating_point() or bool((transition < 0).any()):
            raise ValueError("SubstitutionCorruption transition must be a non-negative float matrix")
        vocab_size = transition.shape[0]
        if token_is_corruptible is None:
            token_is_corruptible = torch.ones(vocab_size, dtype=torch.bool)
        token_is_corruptible = torch.as_tensor(token_is_corruptible)
        if token_is_corruptible.dtype != torch.bool or tuple(token_is_corruptible.shape) != (vocab_size,):
            raise ValueError(
                f"SubstitutionCorruption token_is_corruptible has shape {tuple(token_is_corruptible.shape)} and "
                f"dtype {token_is_corruptible.dtype}; expected a ({vocab_size},) bool tensor"
            )
        row_sums = transition.double().sum(dim=-1)
        bad = (~torch.isclose(row_sums, torch.ones_like(row_sums), atol=1e-5)) & token_is_corruptible
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"SubstitutionCorruption transition row {first} (a corruptible token) sums to "
                f"{float(row_sums[first]):.6g}; expected every corruptible token's row to sum to 1"
            )
        self.register_buffer("transition", transition.float().clone(), persistent=False)
        self.register_buffer("token_is_corruptible", token_is_corruptible.clone(), persistent=False)

    @property
    def vocab_size(self) -> int:
        return self.transition.shape[0]

    @classmethod
    def from_blosum62(cls, tokenizer: PreTrainedTokenizerBase, **sampler_kwargs) -> SubstitutionCorruption:
        """BLOSUM62 substitution over the tokenizer's amino-acid tokens; identity rows elsewhere (spec 5.5)."""
        return cls(vocab_transition_matrix(tokenizer), **sampler_kwargs)

    @classmethod
    def uniform(cls, tokenizer: PreTrainedTokenizerBase, **sampler_kwargs) -> SubstitutionCorruption:
        """Uniform substitution among the tokenizer's corruptible tokens: P[i, j] = 1 / (n - 1), j != i.

        Non-corruptible tokens get zero rows and are never selected (the original's `from_tokenizer`).
        """
        corruptible, _ = token_masks(tokenizer)
        count = int(corruptible.sum())
        if count < 2:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has {count} corruptible tokens; uniform substitution needs 2"
            )
        transition = (corruptible[:, None] & corruptible[None, :]).float() / (count - 1)
        transition.fill_diagonal_(0.0)
        return cls(transition, token_is_corruptible=corruptible, **sampler_kwargs)

    def add_noise(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        is_corruptible: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, L) int ids -> (noisy_ids (B, L), is_corrupted (B, L) bool)."""
        _check_inputs("SubstitutionCorruption", x, noise_level, is_corruptible, x_ndim=2)
        batch_size, length = x.shape
        u = _uniform(x.shape, x.device, generator)  # (B, L)
        is_corrupted = (u < noise_level[:, None]) & is_corruptible & self.token_is_corruptible[x]
        flat_corrupted = is_corrupted.reshape(-1)  # (B*L,)
        rank = (torch.cumsum(flat_corrupted.long(), dim=0) - 1).clamp_min(0)  # (B*L,)
        exponential = torch.empty(
            batch_size * length, self.vocab_size, dtype=self.transition.dtype, device=x.device
        ).exponential_(generator=generator)  # (B*L, V)
        probs = self.transition[x.reshape(-1)]  # (B*L, V)
        sampled = (probs / exponential[rank]).argmax(dim=-1).reshape(batch_size, length)
        noisy = torch.where(is_corrupted, sampled.to(x.dtype), x)
        return noisy, is_corrupted


class GaussianCorruption(CorruptionProcess):
    """Gaussian corruption of embeddings (spec 5.4): x' = (1 - c) x + c sqrt(noise_variance) eps, eps ~ N(0, I),
    at corruptible positions, c = noise_level of the example.

    is_corrupted = is_corruptible & (c > 0) (the original marks every allowed position even at c = 0; at
    c = 0 nothing changes, so we report nothing corrupted).
    """

    acts_on = "embeds"

    def __init__(self, noise_variance: float = 10.0, **sampler_kwargs):
        super().__init__(**sampler_kwargs)
        if not noise_variance > 0:
            raise ValueError(f"GaussianCorruption noise_variance must be > 0, got {noise_variance!r}")
        self.noise_variance = float(noise_variance)

    def add_noise(
        self,
        x: torch.Tensor,
        noise_level: torch.Tensor,
        is_corruptible: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, L, De) float embeddings -> (noisy (B, L, De), is_corrupted (B, L) bool)."""
        _check_inputs("GaussianCorruption", x, noise_level, is_corruptible, x_ndim=3)
        # normal_ draws what torch.randn draws; randn(size, generator=None) fails on symbolic sizes.
        eps = torch.empty(x.shape, dtype=x.dtype, device=x.device).normal_(generator=generator)  # (B, L, De)
        c = noise_level.to(x.dtype)[:, None, None]  # (B, 1, 1)
        noised = (1 - c) * x + c * (self.noise_variance**0.5) * eps
        is_corrupted = is_corruptible & (noise_level > 0)[:, None]
        noisy = torch.where(is_corruptible[..., None], noised, x)
        return noisy, is_corrupted


def _build_mask(tokenizer: PreTrainedTokenizerBase, **kwargs) -> CorruptionProcess:
    if tokenizer.mask_token_id is None:
        raise ValueError(
            f"mask corruption needs a tokenizer with a mask token; {type(tokenizer).__name__} has none"
        )
    return MaskCorruption(tokenizer.mask_token_id, **kwargs)


CORRUPTION_PROCESSES: dict[str, Callable[..., CorruptionProcess]] = {
    "mask": _build_mask,
    "blosum62": SubstitutionCorruption.from_blosum62,
    "uniform": SubstitutionCorruption.uniform,
    "gaussian": lambda tokenizer, **kwargs: GaussianCorruption(**kwargs),
}


def build_corruption(name: str, tokenizer: PreTrainedTokenizerBase, **kwargs) -> CorruptionProcess:
    """Builds a corruption process by short name: "mask", "blosum62", "uniform" or "gaussian".

    kwargs go to the process (`noise_variance` for gaussian) and its timestep sampler (`schedule`,
    `num_timesteps`, `concentration1`, `concentration0`).
    """
    if name not in CORRUPTION_PROCESSES:
        raise ValueError(
            f"unknown corruption process {name!r}; expected one of {sorted(CORRUPTION_PROCESSES)}"
        )
    return CORRUPTION_PROCESSES[name](tokenizer, **kwargs)
