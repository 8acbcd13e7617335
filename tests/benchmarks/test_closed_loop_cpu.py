"""bench/closed_loop_cpu.py: run states cut at a budget become ehrlich.json figures; a second protocol of a
level is stored as a sub-record next to the recorded keys."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_scripts import REPO, load_script

from cortex.design.loop import ClosedLoop, LoopConfig, build_problem


@pytest.fixture(scope="module")
def closed_loop_cpu():
    return load_script(REPO / "bench", "closed_loop_cpu")


def test_record_as_keeps_the_recorded_keys_of_a_level(closed_loop_cpu):
    recorded = {"easy": {"lambo_median_best": 0.09, "budget": 512}, "medium": {"budget": 768}}
    measured = {"easy": {"lambo_median_best": 0.2, "budget": 1664}}
    merged = closed_loop_cpu.merge_levels(recorded, measured, "budget_1664")
    assert merged == {
        "easy": {"lambo_median_best": 0.09, "budget": 512, "budget_1664": measured["easy"]},
        "medium": {"budget": 768},
    }
    assert closed_loop_cpu.merge_levels(recorded, measured)["easy"] == measured["easy"]


def test_states_cut_at_a_budget_give_the_level_figures(closed_loop_cpu, tmp_path):
    """Two seeds of the GA and of random mutation run 3 generations of 8 from a 16-sequence pool; cut at 24
    evaluations, the summary's per-seed bests are the best values among each run's first 24 rows."""
    torch.set_num_threads(1)
    for method in ("ga", "random"):
        for seed in (0, 1):
            problem = build_problem("easy", seed=seed, initial_size=16)
            config = LoopConfig(method=method, seed=seed, batch_size=8, num_rounds=3)
            ClosedLoop(problem, config, tmp_path / "states" / f"easy_{method}_s{seed}").run()
    summary = closed_loop_cpu.summaries_from_states([str(tmp_path)], budget=24)
    runs = closed_loop_cpu.load_runs([str(tmp_path)])
    for method in ("ga", "random"):
        expected = [
            float(torch.nan_to_num(runs[("easy", method, seed)][0][:24], nan=-math.inf).max())
            for seed in (0, 1)
        ]
        assert summary["easy"][method]["best_per_seed"] == expected
        assert summary["easy"][method]["budget"] == 24
    # convert() needs a LaMBO-2 entry: the GA's stands in for it here.
    summary["easy"]["lambo"] = summary["easy"]["ga"]
    ehrlich, _ = closed_loop_cpu.convert([summary])
    assert ehrlich["easy"]["ga_best_per_seed"] == summary["easy"]["ga"]["best_per_seed"]
    assert ehrlich["easy"]["random_median_best"] == summary["easy"]["random"]["median_best"]
    assert ehrlich["easy"]["random_best_per_seed"] == summary["easy"]["random"]["best_per_seed"]
