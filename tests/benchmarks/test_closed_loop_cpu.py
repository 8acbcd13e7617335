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
from safetensors.torch import load_file

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


def test_single_mutants_change_one_mutable_position_each(closed_loop_cpu):
    state = torch.tensor([0, 1, 2])
    mutable = torch.tensor([True, False, True])
    mutants = closed_loop_cpu.single_mutants(state, mutable, vocab_size=3)
    assert mutants.shape == (4, 3)
    assert ((mutants != state).sum(-1) == 1).all()
    assert (mutants[:, 1] == 1).all()  # the immutable position never changes
    assert len({tuple(m) for m in mutants.tolist()}) == 4


def test_rank_improving_mutants_ranks_the_oracle_improvements_of_the_incumbent(closed_loop_cpu, tmp_path):
    """A GA run (16 + 8 evaluations) gives the state; the surrogate is trained on its first 20 rows. The ranked
    set is every feasible single mutant of the incumbent and the improving ones are those the oracle puts above
    it: both counted here independently of the script."""
    torch.set_num_threads(1)
    problem = build_problem("easy", initial_size=16)
    ClosedLoop(problem, LoopConfig(method="ga", batch_size=8, num_rounds=1), tmp_path).run()
    path = str(tmp_path / "loop_state.safetensors")
    tiny = {"num_epochs": 1, "min_train_steps": 0, "feature_dim": 16, "batch_size": 8}
    row = closed_loop_cpu.rank_improving_mutants(path, 20, tiny, train_seed=1)
    tensors = load_file(path)
    values = torch.nan_to_num(tensors["values"][:20], nan=-math.inf)
    best = tensors["states"][:20][values.argmax()]
    true = []
    for position in range(problem.length):
        for token in range(len(problem.alphabet)):
            if token != int(best[position]):
                mutant = best.clone()
                mutant[position] = token
                true.append(float(problem.black_box(problem.decode(mutant[None]))[0]))
    true = torch.tensor(true)
    assert row["num_feasible"] == int(torch.isfinite(true).sum())
    assert row["num_improving"] == int((true > values.max()).sum())
    assert len(row["mean_ranks"]) == len(row["acq_ranks"]) == row["num_improving"]
    assert all(0 <= r < row["num_feasible"] for r in row["mean_ranks"] + row["acq_ranks"])
    assert -1.0 <= row["spearman"] <= 1.0
    with pytest.raises(ValueError, match="cut is 99"):
        closed_loop_cpu.rank_improving_mutants(path, 99, tiny, train_seed=1)
