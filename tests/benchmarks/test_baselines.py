"""Genetic algorithm and random-mutation baselines on real Ehrlich instances and the GB1 oracle."""

import math

import pytest
import torch

from cortex.benchmarks.baselines import GeneticAlgorithm, RandomMutation, benchmark_genetic_algorithm
from cortex.benchmarks.ehrlich import Ehrlich
from cortex.benchmarks.gb1 import GB1Oracle
from cortex.data.tokenization import CANONICAL_AMINO_ACIDS, PROTEIN_VOCAB

OPTIMIZERS = [GeneticAlgorithm, RandomMutation]


@pytest.fixture(scope="module")
def easy() -> Ehrlich:
    return Ehrlich.from_name("easy", random_seed=0)


def test_genetic_algorithm_improves_easy(easy):
    seeds = easy.initial_solution(128)
    start = float(easy(seeds).max())
    optimizer = GeneticAlgorithm(seeds, vocab=range(easy.num_states), num_particles=128, seed=0)
    used_before = easy.num_evaluations
    history = optimizer.run(easy, 24)
    assert optimizer.num_evaluations == easy.num_evaluations - used_before == 128 * 24
    assert optimizer.best_value > start
    assert history == sorted(history)
    assert float(easy(optimizer.best_candidate.unsqueeze(0))) == optimizer.best_value


def test_random_mutation_improves_easy(easy):
    seeds = easy.initial_solution(64)
    optimizer = RandomMutation(seeds, vocab=range(easy.num_states), num_particles=64, seed=1)
    optimizer.run(easy, 24)
    assert optimizer.best_value > float(easy(seeds).max())


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_seeded_runs_repeat(cls, easy):
    seeds = easy.initial_solution(16)
    runs = []
    for seed in [3, 3, 4]:
        optimizer = cls(seeds, vocab=range(easy.num_states), num_particles=16, seed=seed)
        optimizer.run(easy, 3)
        runs.append(optimizer.ask())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_edit_budget_and_immutable_positions(cls, easy):
    seeds = easy.initial_solution(4)
    is_mutable = torch.zeros(easy.dim, dtype=torch.bool)
    is_mutable[8:24] = True
    optimizer = cls(
        seeds, vocab=range(easy.num_states), num_particles=32, is_mutable=is_mutable, max_edits=3, seed=0
    )
    ever_edited = 0
    for _ in range(6):
        candidates = optimizer.ask()
        distance_to_seeds = (candidates.unsqueeze(1) != seeds.unsqueeze(0)).sum(-1)  # (P, N)
        assert (distance_to_seeds.min(dim=1).values <= 3).all()
        assert torch.equal(candidates[:, ~is_mutable], seeds[optimizer.anchor][:, ~is_mutable])
        ever_edited = max(ever_edited, int(distance_to_seeds.min(dim=1).values.max()))
        optimizer.tell(easy(candidates))
    assert ever_edited == 3  # the budget is reached, not just respected


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_gb1_design_stays_in_the_four_sites(cls):
    oracle = GB1Oracle()
    seeds = oracle.encode(oracle.sample_seeds(8, seed=0))
    vocab = [PROTEIN_VOCAB.index(residue) for residue in CANONICAL_AMINO_ACIDS]
    optimizer = cls(seeds, vocab=vocab, num_particles=32, is_mutable=oracle.is_mutable, max_edits=2, seed=0)
    optimizer.run(oracle, 5)
    candidate = optimizer.best_candidate
    assert torch.equal(candidate[~oracle.is_mutable], seeds[0][~oracle.is_mutable])
    assert optimizer.best_value > float(oracle(seeds).max())  # unknown (NaN) values never win


def test_bad_arguments(easy):
    seeds = easy.initial_solution(4)
    with pytest.raises(ValueError, match=r"seeds must be a \(N, L\) int64 tensor; got torch.float32"):
        GeneticAlgorithm(seeds.float(), vocab=range(32))
    with pytest.raises(ValueError, match="is_mutable must be a bool tensor of shape"):
        GeneticAlgorithm(seeds, vocab=range(32), is_mutable=torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mutation_prob must be in"):
        GeneticAlgorithm(seeds, vocab=range(32), mutation_prob=1.5)
    with pytest.raises(ValueError, match="max_edits must be None or an int >= 1; got 0"):
        RandomMutation(seeds, vocab=range(32), max_edits=0)
    optimizer = RandomMutation(seeds, vocab=range(32), num_particles=8)
    with pytest.raises(RuntimeError, match="tell called before ask"):
        optimizer.tell(torch.zeros(8))
    optimizer.ask()
    with pytest.raises(ValueError, match=r"tell expects \(8,\) values"):
        optimizer.tell(torch.zeros(7))


def test_benchmark_helper_counts_the_budget():
    result = benchmark_genetic_algorithm("easy", seeds=[0, 1, 2], num_particles=16, num_steps=2)
    assert result["num_evaluations"] == 32
    assert len(result["best"]) == 3
    assert result["median"] == sorted(result["best"])[1]
    assert all(0.0 <= value <= 1.0 or value == -math.inf for value in result["best"])
