"""Noise schedules and the timestep sampler: axis convention, validation, and parity with the original."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cortex.corruption.schedules import BETA_SCHEDULES, NoiseSchedule, TimestepSampler, beta_schedule

PARITY = Path(__file__).resolve().parents[1] / "parity"


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads((PARITY / "noise_schedule.json").read_text())
    return meta, load_file(str(PARITY / "noise_schedule.safetensors"))


@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
@pytest.mark.parametrize("num_timesteps", [50, 1000])
def test_noise_level_rises_from_clean(name, num_timesteps):
    schedule = NoiseSchedule(name, num_timesteps)
    levels = schedule.noise_level(torch.arange(num_timesteps + 1))
    assert levels.dtype == torch.float64 and levels.shape == (num_timesteps + 1,)
    assert levels[0] == 0
    assert (levels[1:].diff() >= 0).all()
    assert ((levels >= 0) & (levels <= 1)).all()
    # Same values as the original's axis, reversed: level(t) = original(T + 1 - t) for t >= 1.
    original = schedule.original_corrupt_frac()
    t = torch.arange(1, num_timesteps + 1)
    assert torch.equal(levels[t], original[num_timesteps + 1 - t])


def test_invalid_schedule_arguments():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match="must be an int >= 11, got 5"):
        beta_schedule("pw_lin", 5)
    with pytest.raises(ValueError, match="integer tensor"):
        NoiseSchedule().noise_level(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="concentration1 must be > 0"):
        TimestepSampler(concentration1=0.0)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        TimestepSampler().sample_noise_level(0)


def test_sampler_levels_match_timesteps_and_are_seeded():
    sampler = TimestepSampler("linear", 200)
    t = sampler.sample_timestep(64, generator=torch.Generator().manual_seed(1))
    levels = sampler.sample_noise_level(64, generator=torch.Generator().manual_seed(1))
    assert t.dtype == torch.int64 and ((t >= 0) & (t <= 200)).all()
    assert torch.equal(levels, sampler.schedule.noise_level(t))
    assert not torch.equal(levels, sampler.sample_noise_level(64, generator=torch.Generator().manual_seed(2)))
    assert sampler.state_dict() == {}


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(BETA_SCHEDULES))
def test_schedules_match_original(fixture, name):
    meta, tensors = fixture
    keys = [k for k in meta["schedules"] if k.rsplit("_T", 1)[0] == name]
    assert keys
    for key in keys:
        num_timesteps = meta["schedules"][key]["max_steps"]
        schedule = NoiseSchedule(name, num_timesteps)
        torch.testing.assert_close(schedule.betas, tensors[f"{key}.betas"], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(
            schedule.alphas_cumprod, tensors[f"{key}.alphas_cumprod"], rtol=1e-12, atol=1e-15
        )
        original = tensors[f"{key}.corrupt_frac_by_timestep"]
        torch.testing.assert_close(schedule.original_corrupt_frac(), original, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(schedule.noise_levels[1:], original[1:].flip(0), rtol=1e-12, atol=1e-15)
        for t_original, value in meta["schedules"][key]["corrupt_frac_at"].items():
            t_original = int(t_original)
            t = 0 if t_original == 0 else num_timesteps + 1 - t_original
            assert schedule.noise_level(t).item() == pytest.approx(value, rel=1e-12, abs=1e-15)


@pytest.mark.parity
def test_sampler_reproduces_original_draws(fixture):
    meta, tensors = fixture
    config = meta["sampler"]
    sampler = TimestepSampler(
        config["schedule"], config["max_steps"], config["concentration1"], config["concentration0"]
    )
    first = tensors["sampler.corrupt_frac_first"]
    levels = sampler.sample_noise_level(first.shape[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(levels, first)
    t = sampler.sample_timestep(first.shape[0], generator=torch.Generator().manual_seed(0))
    t_original = tensors["sampler.timestep_first"].long()
    assert torch.equal(t, torch.where(t_original == 0, 0, config["max_steps"] + 1 - t_original))


@pytest.mark.parity
def test_sampler_distribution_matches_original(fixture):
    meta, tensors = fixture
    config = meta["sampler"]
    stats = config["stats"]
    sampler = TimestepSampler(
        config["schedule"], config["max_steps"], config["concentration1"], config["concentration0"]
    )
    # A different seed than the fixture: the distribution, not the draws, must agree.
    levels = sampler.sample_noise_level(stats["n"], generator=torch.Generator().manual_seed(1234)).numpy()
    assert levels.mean() == pytest.approx(stats["mean"], abs=0.003)
    assert levels.std() == pytest.approx(stats["std"], abs=0.003)
    for q, value in stats["quantiles"].items():
        assert np.quantile(levels, float(q)) == pytest.approx(value, abs=0.006)
    edges = tensors["sampler.corrupt_frac_hist_edges"]
    counts = tensors["sampler.corrupt_frac_hist_counts"]
    ours, _ = np.histogram(levels, bins=edges.numpy())
    reference = counts.numpy() / counts.numpy().sum()
    assert np.abs(ours / ours.sum() - reference).max() < 0.004
