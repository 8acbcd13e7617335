"""Noise schedules: named beta schedules, the timestep -> noise level table, and the timestep sampler.

Axis convention (STYLE.md habit 7): timestep t = 0 is clean and the noise level RISES with t.
The original cortex (spec 5.2, quirk A12) used corrupt_frac(t') = sqrt(alphas_cumprod[t' - 1]) for
t' >= 1 and 0 for t' = 0, which DECREASES with t'. We keep its values and reverse its axis:

    noise_level(0) = 0
    noise_level(t) = corrupt_frac_original(T + 1 - t) = sqrt(alphas_cumprod[T - t])   for 1 <= t <= T

so noise_level(1) = sqrt(alphas_cumprod[T - 1]) (nearly clean) and noise_level(T) = sqrt(alphas_cumprod[0])
(nearly fully corrupted). The set of values is exactly the original's; only the labels of the timesteps change.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

_MAX_BETA = 0.999


def _betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float]) -> list[float]:
    # beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), 0.999), i = 0 .. T - 1 (spec 5.1).
    return [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), _MAX_BETA)
        for i in range(num_timesteps)
    ]


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _trunc_cos_alpha_bar(t: float) -> float:
    return math.cos((t + 0.1) / 1.1 * math.pi / 2) ** 2


def _cosine(num_timesteps: int) -> np.ndarray:
    return np.array(_betas_for_alpha_bar(num_timesteps, _cosine_alpha_bar), dtype=np.float64)


def _sqrt(num_timesteps: int) -> np.ndarray:
    return np.array(
        _betas_for_alpha_bar(num_timesteps, lambda t: 1.0 - math.sqrt(t + 1e-4)), dtype=np.float64
    )


def _trunc_cos(num_timesteps: int) -> np.ndarray:
    # beta_0 = min(1 - alpha_bar(0), 0.999), then the usual ratio for i = 0 .. T - 2 (spec 5.1).
    betas = [min(1.0 - _trunc_cos_alpha_bar(0.0), _MAX_BETA)]
    betas += _betas_for_alpha_bar(num_timesteps, _trunc_cos_alpha_bar)[: num_timesteps - 1]
    return np.array(betas, dtype=np.float64)


def _linear(num_timesteps: int) -> np.ndarray:
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def _trunc_lin(num_timesteps: int) -> np.ndarray:
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4 + 0.01, scale * 0.02 + 0.01, num_timesteps, dtype=np.float64)


def _pw_lin(num_timesteps: int) -> np.ndarray:
    scale = 1000 / num_timesteps
    head = np.linspace(scale * 1e-4 + 0.01, scale * 1e-4, 10, dtype=np.float64)
    tail = np.linspace(scale * 1e-4, scale * 0.02, num_timesteps - 10, dtype=np.float64)
    return np.concatenate([head, tail])


BETA_SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "cosine": _cosine,
    "linear": _linear,
    "sqrt": _sqrt,
    "trunc_cos": _trunc_cos,
    "trunc_lin": _trunc_lin,
    "pw_lin": _pw_lin,
}


def beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """(T,) float64 betas beta_0 .. beta_{T-1} of a named schedule (spec 5.1, original `get_named_beta_schedule`)."""
    if name not in BETA_SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; expected one of {sorted(BETA_SCHEDULES)}")
    min_steps = 11 if name == "pw_lin" else 1
    if not isinstance(num_timesteps, int) or isinstance(num_timesteps, bool) or num_timesteps < min_steps:
        raise ValueError(
            f"num_timesteps for schedule {name!r} must be an int >= {min_steps}, got {num_timesteps!r}"
        )
    betas = torch.from_numpy(BETA_SCHEDULES[name](num_timesteps))
    if not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError(f"schedule {name!r} with T={num_timesteps} produced betas outside (0, 1]")
    return betas


class NoiseSchedule:
    """A named beta schedule and its timestep -> noise level table (float64).

    Attributes:
        betas, alphas_cumprod, sqrt_alphas_cumprod: (T,) float64, in the original's index order.
        noise_levels: (T + 1,) float64; noise_levels[t] is the noise level of timestep t (t = 0 clean,
            rising with t; see the module docstring for the exact mapping to the original's axis).
    """

    def __init__(self, name: str = "cosine", num_timesteps: int = 1000):
        self.name = name
        self.num_timesteps = num_timesteps
        self.betas = beta_schedule(name, num_timesteps)
        self.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - self.betas.numpy()))
        self.sqrt_alphas_cumprod = torch.from_numpy(np.sqrt(self.alphas_cumprod.numpy()))
        # (T + 1,): [0, sqrt(acp[T-1]), sqrt(acp[T-2]), ..., sqrt(acp[0])]
        self.noise_levels = torch.cat([torch.zeros(1, dtype=torch.float64), self.sqrt_alphas_cumprod.flip(0)])

    def original_corrupt_frac(self) -> torch.Tensor:
        """(T + 1,) float64: the original's corrupt_frac(t') for t' = 0 .. T (decreasing for t' >= 1)."""
        return torch.cat([torch.zeros(1, dtype=torch.float64), self.sqrt_alphas_cumprod])

    def noise_level(self, t: torch.Tensor | int) -> torch.Tensor:
        """Noise level (float64, shape of `t`) of integer timesteps t in [0, T]."""
        t = torch.as_tensor(t)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be an integer tensor, got dtype {t.dtype}")
        return self.noise_levels.to(t.device)[t.long()]


class TimestepSampler(nn.Module):
    """Samples training timesteps and their noise levels with the original's distribution (spec 5.2).

    The original draws u ~ Beta(concentration1, concentration0) (default Beta(3, 1)) on the CPU generator,
    sets t' = round(T u) (int32) on its decreasing axis and uses corrupt_frac(t'). We draw the same u with the
    same RNG calls (so a generator seeded like the original's global one gives bit-identical levels) and map
    t' to our rising axis: t = 0 if t' = 0 else T + 1 - t'. Noise levels: mean ~0.3587 for cosine, T = 1000.

    The (T + 1,) noise level table is a non-persistent buffer, so a state dict never contains it.
    """

    noise_levels: torch.Tensor

    def __init__(
        self,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        concentration1: float = 3.0,
        concentration0: float = 1.0,
    ):
        super().__init__()
        for name, value in (("concentration1", concentration1), ("concentration0", concentration0)):
            if not value > 0:
                raise ValueError(f"TimestepSampler {name} must be > 0, got {value!r}")
        self.schedule = NoiseSchedule(schedule, num_timesteps)
        self.num_timesteps = num_timesteps
        self.concentration1 = float(concentration1)
        self.concentration0 = float(concentration0)
        self.register_buffer("noise_levels", self.schedule.noise_levels.clone(), persistent=False)

    def sample_timestep(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(batch_size,) int64 timesteps on the rising axis (t = 0 clean)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        # The draw runs on the generator's device, else on `device` (else the schedule's): on CPU that is the
        # original's CPU RNG stream; on a GPU no host draw and host-to-device copy sits in the step (a blocking
        # copy synchronised the stream, issue 8, and a captured step graph cannot read host memory).
        if generator is not None:
            rng_device = generator.device
        else:
            rng_device = torch.device(device) if device is not None else self.noise_levels.device
        # (batch_size, 2) rows [a, b], filled on the device (no host tensor to copy inside a captured graph).
        concentration = torch.stack(
            [
                torch.full((batch_size,), value, device=rng_device)
                for value in (self.concentration1, self.concentration0)
            ],
            dim=1,
        )
        # Beta(a, b).sample((n,)) is Dirichlet([a, b]) component 0; this is the same kernel and RNG draw.
        u = torch._sample_dirichlet(concentration, generator=generator)[:, 0]
        t_original = torch.round(self.num_timesteps * u).to(torch.int32).long()  # original's t' in [0, T]
        t = torch.where(t_original == 0, t_original, self.num_timesteps + 1 - t_original)
        return t.to(device if device is not None else self.noise_levels.device, non_blocking=True)

    def sample_noise_level(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """(batch_size,) float64 noise levels in [0, 1], one per example."""
        t = self.sample_timestep(batch_size, generator=generator, device=self.noise_levels.device)
        levels = self.noise_levels[t]
        return levels.to(device) if device is not None else levels
