"""The closed loop on Ehrlich "easy" at CPU size: rounds, resume after an interruption, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import scipy.stats
import torch

from cortex.benchmarks.blackbox import FunctionBlackBox
from cortex.design.loop import (
    ClosedLoop,
    DesignProblem,
    LoopConfig,
    build_problem,
    log_transform,
    rank_transform,
    roc_auc,
    spearman,
    state_tokenizer,
)
from cortex.design.tree_objectives import AcquisitionObjective

TINY = {
    "batch_size": 16,
    "num_rounds": 2,
    "num_epochs": 1,
    "min_train_steps": 0,
    "lambo_steps": 2,
    "feature_dim": 16,
}


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; a second OpenMP thread only spins on the shared 2-core box
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def easy():
    return build_problem("easy", initial_size=16)


class Interrupted(RuntimeError):
    pass


def _raise_after(round_to_fail: int):
    def callback(loop, round_index):
        if round_index == round_to_fail:
            raise Interrupted(f"killed after round {round_index}")

    return callback


@pytest.mark.parametrize("method", ["lambo", "ga"])
def test_two_rounds_then_resume_equals_uninterrupted(easy, tmp_path, method):
    config = LoopConfig(method=method, **TINY)
    full = ClosedLoop(easy, config, tmp_path / "full").run()
    assert full.values.numel() == 16 + 2 * 16
    assert full.rounds.max() >= 2
    assert {row["round"] for row in full.history} >= {0, 1, 2}
    # Every proposal is new and measured once.
    assert len(set(map(tuple, full.states.tolist()))) == full.states.shape[0]

    with pytest.raises(Interrupted):
        ClosedLoop(easy, config, tmp_path / "killed").run(on_round_end=_raise_after(1))
    interrupted = ClosedLoop(easy, config, tmp_path / "killed")
    resumed = interrupted.run()
    assert torch.equal(resumed.states, full.states)
    assert torch.equal(resumed.values, full.values)
    assert resumed.history == full.history
    if method == "lambo":
        reference = ClosedLoop(easy, config, tmp_path / "full")
        reference._load()
        for name, tensor in reference.model.state_dict().items():
            assert torch.equal(interrupted.model.state_dict()[name], tensor), name


def test_lambo_learns_feasibility_leaf(easy):
    loop = ClosedLoop(easy, LoopConfig(method="lambo", **TINY))
    assert "feasible" in loop.model_config().leaves
    result = loop.run()
    proposed = result.values[result.rounds > 0]
    assert proposed.numel() == 32
    assert math.isfinite(float(result.best_so_far[-1]))
    # Every LaMBO-2 round records how the surrogate that proposed the batch ranked it once measured.
    assert result.history[0]["surrogate_spearman"] is None
    for row in result.history[1:]:
        assert -1.0 <= row["surrogate_spearman"] <= 1.0
        assert row["feasible_auc"] is None or 0.0 <= row["feasible_auc"] <= 1.0


def test_log_transform_turns_a_product_into_a_sum_and_floors_zeros():
    values = torch.tensor([0.25, math.nan, 0.0, 0.5, 0.125, -math.inf])
    logs = log_transform(values)
    assert torch.equal(logs.isnan(), torch.tensor([False, True, False, False, False, True]))
    assert logs[[2, 4, 0, 3]].tolist() == pytest.approx(
        [math.log(0.0625), math.log(0.125), math.log(0.25), math.log(0.5)]
    )
    assert logs[0] - logs[4] == pytest.approx(logs[3] - logs[0])  # equal ratios, equal steps
    assert LoopConfig(target_transform="log").target_transform == "log"
    with pytest.raises(ValueError, match=r"target_transform is 'sqrt'"):
        LoopConfig(target_transform="sqrt")


def test_rank_transform_spearman_and_auc_on_known_values():
    values = torch.tensor([0.1, math.nan, 0.0, 0.1, 0.5, -math.inf])
    ranks = rank_transform(torch.where(values.isfinite(), values, torch.full_like(values, math.nan)))
    assert torch.equal(ranks.isnan(), torch.tensor([False, True, False, False, False, True]))
    assert ranks[[2, 0, 3, 4]].tolist() == [0.0, 0.5, 0.5, 1.0]  # ties share the mid-rank
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert spearman(x, x.exp()) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, torch.ones(4)) == 0.0
    labels = torch.tensor([False, True, False, True])
    assert roc_auc(x, labels) == pytest.approx(0.75)  # 3 of the 4 (positive, negative) pairs ordered right
    assert roc_auc(torch.ones(4), labels) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(x, torch.ones(4, dtype=torch.bool))


def test_lambo_population_larger_than_batch_tiles_the_best_seeds(easy, tmp_path):
    """A LaMBO-2 population of 48 from the 4 best measured sequences still measures batch_size new sequences a
    round (chosen by acquisition), with rank-transformed targets."""
    config = LoopConfig(
        method="lambo",
        **{**TINY, "num_rounds": 1},
        lambo_population=48,
        lambo_seed_pool=4,
        target_transform="rank",
    )
    loop = ClosedLoop(easy, config, tmp_path)
    result = loop.run()
    assert result.values.numel() == 16 + 16
    seeds = loop.lambo_seeds()
    order = torch.sort(torch.nan_to_num(loop.values, nan=-math.inf), descending=True, stable=True).indices
    assert len(seeds) == 48
    assert seeds[:4] == easy.decode(loop.states[order[:4]]) == seeds[4:8]
    assert len(set(seeds)) == 4


@pytest.mark.parametrize("method", ["ga", "random"])
def test_baseline_population_smaller_than_the_start_begins_from_its_best(easy, method):
    """A baseline with fewer particles (4) than starting sequences (16) starts from the 4 best of them, so it
    selects from the same starting data as LaMBO-2 (not from the first 4 in the given order)."""
    loop = ClosedLoop(easy, LoopConfig(method=method, batch_size=4, budget=16))
    loop.run()  # the budget is the starting set: measures it, proposes nothing
    values = torch.nan_to_num(loop.values, nan=-math.inf)
    best = torch.sort(values, descending=True, stable=True).indices[:4]
    assert not torch.equal(best, torch.arange(4)), (
        "the starting set is already best first: the test proves nothing"
    )
    assert torch.equal(loop._new_baseline().ask(), loop.states[best])
    given = ClosedLoop(easy, LoopConfig(method=method, batch_size=4, budget=16, baseline_start="given"))
    given.run()
    assert torch.equal(given._new_baseline().ask(), given.states[:4])


def test_state_of_another_run_is_refused(easy, tmp_path):
    ClosedLoop(easy, LoopConfig(method="ga", **TINY), tmp_path).run()
    with pytest.raises(ValueError, match="config"):
        ClosedLoop(easy, LoopConfig(method="random", **TINY), tmp_path).run()


def test_oracle_rejects_bad_batches(easy):
    oracle = easy.black_box
    with pytest.raises(ValueError, match="length 31; expected 32"):
        oracle(["A" * 31])
    with pytest.raises(ValueError, match=r"'\?' at position 3"):
        oracle(["AAA?" + "A" * 28])
    with pytest.raises(TypeError, match="single str"):
        oracle("A" * 32)
    with pytest.raises(TypeError, match="float"):
        oracle(torch.zeros(2, 32))
    with pytest.raises(ValueError, match="out of the vocabulary"):
        oracle(torch.full((1, 32), 40))


def test_loop_rejects_bad_input(easy):
    with pytest.raises(ValueError, match="method is 'bayes'"):
        LoopConfig(method="bayes")
    with pytest.raises(ValueError, match="batch_size is 0"):
        LoopConfig(batch_size=0)
    with pytest.raises(ValueError, match="target_transform is 'exp'"):
        LoopConfig(target_transform="exp")
    with pytest.raises(ValueError, match="baseline_start is 'worst'"):
        LoopConfig(baseline_start="worst")
    with pytest.raises(ValueError, match="lambo_population is 0"):
        LoopConfig(lambo_population=0)
    with pytest.raises(ValueError, match="kmer_screen is 0"):
        LoopConfig(kmer_screen=0)
    with pytest.raises(ValueError, match=r"max_property_noise_level is 1\.5"):
        LoopConfig(max_property_noise_level=1.5)
    with pytest.raises(ValueError, match="max_edit_distance is 0"):
        LoopConfig(max_edit_distance=0)
    with pytest.raises(ValueError, match="property_pooling is 'median'"):
        LoopConfig(property_pooling="median")
    with pytest.raises(ValueError, match="budget 8 is smaller than the starting set"):
        ClosedLoop(easy, LoopConfig(budget=8))
    with pytest.raises(ValueError, match="has length 3; expected 32"):
        easy.encode(["ABC"])
    with pytest.raises(ValueError, match=r"'\*' at position 0"):
        easy.encode(["*" + "A" * 31])
    with pytest.raises(TypeError, match="is int; expected a string"):
        easy.encode([7])


def test_black_box_returning_wrong_shape_is_named():
    alphabet = "AB"
    problem = DesignProblem(
        name="user-assay",
        black_box=FunctionBlackBox(lambda batch: [0.0], length=4, alphabet=alphabet),
        alphabet=alphabet,
        initial=["AAAA", "ABAB"],
        is_mutable=torch.ones(4, dtype=torch.bool),
        learn_feasibility=False,
        target_value=None,
        tokenizer=state_tokenizer(alphabet),
    )
    with pytest.raises(ValueError, match=r"returned \(1,\) for a chunk of 2"):
        ClosedLoop(problem, LoopConfig(method="ga", batch_size=2, num_rounds=1)).run()


def test_gb1_loop_keeps_edits_at_the_four_sites(tmp_path):
    problem = build_problem("gb1", seed=0, initial_size=8)
    result = ClosedLoop(problem, LoopConfig(method="lambo", **{**TINY, "batch_size": 8}), tmp_path).run()
    wild = problem.encode([problem.black_box.wild_type])[0]
    fixed = ~problem.is_mutable
    assert (result.states[:, fixed] == wild[fixed]).all()
    assert result.values.numel() == 8 + 2 * 8


def test_explore_feasible_frac_leaves_a_problem_without_feasibility_constraint_unchanged():
    """The explorer floor (default 0.9) acts only where the k-mer screen does, on problems with a feasibility
    constraint: GB1 proposes exactly the same sequences with it on and off (so its GB1 figures stand)."""
    problem = build_problem("gb1", seed=0, initial_size=8)
    runs = [
        ClosedLoop(
            problem,
            LoopConfig(
                method="lambo", explore_feasible_frac=floor, **{**TINY, "batch_size": 8, "num_rounds": 1}
            ),
        )
        .run()
        .states
        for floor in (0.9, None)
    ]
    assert runs[0].shape[0] == 8 + 8
    assert torch.equal(runs[0], runs[1])


def test_fill_batch_completes_a_round_with_single_mutants_of_the_seeds():
    """A LaMBO-2 population of 2 with 1 step visits at most 2 candidates: with fill_batch (default) the round still
    measures its 8, the rest single mutants of the seeds at GB1's four sites; without it, at most 2."""
    problem = build_problem("gb1", seed=0, initial_size=8)
    tiny = {**TINY, "batch_size": 8, "num_rounds": 1, "lambo_steps": 1, "lambo_population": 2}
    filled = ClosedLoop(problem, LoopConfig(method="lambo", **tiny)).run()
    unfilled = ClosedLoop(problem, LoopConfig(method="lambo", fill_batch=False, **tiny)).run()
    from_lambo = int((unfilled.rounds == 1).sum())  # the same LaMBO-2 rows come first in both runs
    assert int((filled.rounds == 1).sum()) == 8 and from_lambo <= 2
    new = filled.states[filled.rounds == 1]
    assert torch.equal(new[:from_lambo], unfilled.states[unfilled.rounds == 1])
    assert len({tuple(row) for row in filled.states.tolist()}) == 16
    distance = (new[:, None, :] != filled.states[None, :8, :]).sum(-1).min(-1).values  # to the nearest seed
    assert (distance[from_lambo:] == 1).all()
    assert not (new[:, ~problem.is_mutable] != filled.states[:1, ~problem.is_mutable]).any()


def test_kmer_screen_keeps_feasible_mutants():
    """Single-site mutants of DMP samples whose bigrams all occur in the measured feasible set are feasible far
    more often than unscreened mutants (the screen LaMBO-2 proposals pass on constrained problems)."""
    problem = build_problem("easy", initial_size=128)
    loop = ClosedLoop(problem, LoopConfig(method="lambo", kmer_screen=2, distinct_edits=True))
    loop.states = problem.initial_states
    loop.values = problem.black_box(problem.initial).float()
    generator = torch.Generator().manual_seed(1)
    mutants = loop.states.repeat(4, 1)  # (512, L)
    rows = torch.arange(mutants.shape[0])
    positions = torch.randint(problem.length, (mutants.shape[0],), generator=generator)
    mutants[rows, positions] = torch.randint(len(problem.alphabet), (mutants.shape[0],), generator=generator)
    feasible = torch.isfinite(problem.black_box(problem.decode(mutants)))
    kept = loop.unseen_kmers(mutants) == 0
    assert 64 <= int(kept.sum()) < kept.numel()
    assert (
        feasible.float().mean() < 0.8
    )  # random single mutations break a transition about a third of the time
    assert feasible[kept].float().mean() >= 0.95
    assert (loop.unseen_kmers(loop.states) == 0).all()
    # Nothing measured feasible yet: nothing to compare with, every candidate passes.
    loop.values = torch.full_like(loop.values, -math.inf)
    assert (loop.unseen_kmers(mutants) == 0).all()


def test_mlm_learns_only_from_feasible_rows(easy):
    """With mlm_feasible_only, infeasible rows get noise level 0: nothing of theirs is corrupted or predicted."""
    loop = ClosedLoop(easy, LoopConfig(method="lambo", **{**TINY, "num_epochs": 1}))
    loop.states = easy.initial_states
    loop.values = torch.full((easy.initial_states.shape[0],), -math.inf)
    before = {k: v.clone() for k, v in loop._build_model(0).state_dict().items() if "generation" in k}
    model = loop.train_surrogate(train_seed=0)
    after = {k: v for k, v in model.state_dict().items() if "generation" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def _mlm_corrupted_rows(problem, config) -> tuple[set, set]:
    """Trains the loop's surrogate on `problem`'s starting set (row i has value i) and returns the token-id rows
    the MLM leaf's batches corrupted (noise level > 0) and those of the seed pool."""
    loop = ClosedLoop(problem, config)
    loop.states = problem.initial_states
    loop.values = torch.arange(problem.initial_states.shape[0], dtype=torch.float32)
    model = loop._build_model(0)
    corrupted: set[tuple[int, ...]] = set()
    forward = model.forward

    def spy(*args, **kwargs):  # records what the MLM call saw, then runs it unchanged
        if kwargs.get("leaves") == ["sequence_mlm"]:
            inputs = kwargs["root_inputs"]["sequence"]
            for ids, noise in zip(inputs["input_ids"].tolist(), inputs["noise_level"].tolist(), strict=True):
                if noise > 0:
                    corrupted.add(tuple(ids))
        return forward(*args, **kwargs)

    model.forward = spy
    loop._build_model = lambda seed: model
    loop.train_surrogate(train_seed=0)
    pool = model.tokenize(problem.decode(loop.states[loop.seed_pool()]), root="sequence")["input_ids"]
    return corrupted, {tuple(row) for row in pool.tolist()}


def test_mlm_seed_pool_only_corrupts_only_the_seed_pool(easy):
    """By default (mlm_seed_pool_only) the MLM leaf's batches corrupt exactly the rows of the LaMBO-2 seed pool
    (the batch_size // 2 = 8 best measured sequences); with the option off, the other rows too."""
    corrupted, pool = _mlm_corrupted_rows(easy, LoopConfig(method="lambo", **{**TINY, "num_epochs": 2}))
    assert len(pool) == 8 and corrupted == pool
    off = LoopConfig(method="lambo", mlm_seed_pool_only=False, **{**TINY, "num_epochs": 2})
    corrupted, pool = _mlm_corrupted_rows(easy, off)
    assert corrupted > pool and len(corrupted) == 16


def test_select_batch_spreads_edits_and_screens_kmers():
    """In acquisition order, a candidate repeating an edit already in the batch waits until distinct ones are
    taken; candidates with unseen bigrams come after fully seen ones."""
    alphabet = "ABCD"
    problem = DesignProblem(
        name="toy",
        black_box=FunctionBlackBox(lambda batch: [0.0] * len(batch), length=4, alphabet=alphabet),
        alphabet=alphabet,
        initial=["AAAA", "ABAB", "ABBA"],
        is_mutable=torch.ones(4, dtype=torch.bool),
        learn_feasibility=True,
        target_value=None,
        tokenizer=state_tokenizer(alphabet),
    )
    loop = ClosedLoop(
        problem, LoopConfig(method="lambo", kmer_screen=2, distinct_edits=True, explore_feasible_frac=None)
    )
    loop.states, loop.values = problem.initial_states, torch.zeros(3)
    parent = "AAAA"
    proposals = ["BAAA", "BBAA", "AABA", "ADAA", "ABAA"]  # acquisition order; ADAA has unseen bigrams AD, DA
    chosen = loop.select_batch(problem.encode(proposals), problem.encode([parent] * 5), 3)
    # BBAA (bigrams all seen) repeats BAAA's edit (0, B): it waits; ADAA (unseen AD, DA) comes last anyway.
    assert problem.decode(chosen) == ["BAAA", "AABA", "ABAA"]
    plain = ClosedLoop(problem, LoopConfig(method="lambo", kmer_screen=None, distinct_edits=False))
    plain.states, plain.values = loop.states, loop.values
    chosen = plain.select_batch(problem.encode(proposals), problem.encode([parent] * 5), 3)
    assert problem.decode(chosen) == proposals[:3]


def test_crossover_seeds_join_two_pool_members(easy):
    """With seed_crossover 0.25, the last quarter of the LaMBO-2 seeds are one-point crossovers: a prefix of one
    of the 4 best sequences followed by the suffix of another."""
    config = LoopConfig(method="lambo", lambo_population=48, lambo_seed_pool=4, seed_crossover=0.25)
    loop = ClosedLoop(easy, config)
    loop.states = easy.initial_states
    loop.values = easy.black_box(easy.initial).float()
    loop.generator = torch.Generator().manual_seed(0)
    seeds = loop.lambo_seeds()
    pool = seeds[:4]
    assert len(seeds) == 48 and seeds[:36] == pool * 9
    children = seeds[36:]
    assert any(child not in pool for child in children)
    for child in children:
        assert any(
            child == a[:cut] + b[cut:] for a in pool for b in pool if a != b for cut in range(1, easy.length)
        ), child
    with pytest.raises(ValueError, match=r"seed_crossover is 1\.5"):
        LoopConfig(seed_crossover=1.5)


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_property_pooling_reaches_the_surrogate(easy, pooling):
    """The property branch pools as configured; with max pooling the objective prediction of a sequence equals
    the leaf applied to the per-channel max of the branch features."""
    loop = ClosedLoop(easy, LoopConfig(property_pooling=pooling, **TINY))
    assert loop.model_config().branch_configs["property"].pooling == pooling
    model = loop._build_model(0).eval()
    encoded = model.tokenize(easy.initial[:3], root="sequence")
    with torch.no_grad():
        out = model(root_inputs={"sequence": encoded}, leaves=["objective"])
    hidden = out.branch_outputs["property"].last_hidden_state  # (E, B, L, D)
    expected = hidden.amax(dim=2) if pooling == "max" else hidden.mean(dim=2)
    torch.testing.assert_close(out.branch_outputs["property"].pooled, expected)


def test_max_edit_distance_keeps_proposals_within_the_trust_region(easy):
    """With max_edit_distance=1 every LaMBO-2 proposal of a round is a single mutant of one of the round's seeds
    (the 4 best sequences of the starting set); without it the same round strays further."""
    distances = {}
    for budget in (1, None):
        config = LoopConfig(
            **{**TINY, "num_rounds": 1, "lambo_steps": 4},
            lambo_seed_pool=4,
            max_edit_distance=budget,
            explore_feasible_frac=None,  # LaMBO-2's own proposals only (the floor's fill adds single mutants)
        )
        loop = ClosedLoop(easy, config)
        loop.run()
        start = loop.rounds == 0
        order = torch.sort(torch.nan_to_num(loop.values[start], nan=-math.inf), descending=True, stable=True)
        seeds = loop.states[start][order.indices[:4]]  # (4, L)
        proposals = loop.states[loop.rounds == 1]  # (P, L)
        assert proposals.shape[0] > 0
        distances[budget] = (proposals[:, None, :] != seeds[None, :, :]).sum(-1).min(-1).values  # (P,)
    assert int(distances[1].max()) == 1
    assert int(distances[None].max()) > 1


def test_kmer_explore_reserves_slots_for_one_unseen_kmer_not_proved_forbidden():
    """With kmer_explore, the first candidate (acquisition order) with a single unseen bigram that no infeasible
    measurement ruled out goes first; a bigram that was the only unseen one of an infeasible sequence is
    forbidden."""
    alphabet = "ABCD"
    problem = DesignProblem(
        name="toy",
        black_box=FunctionBlackBox(lambda batch: [0.0] * len(batch), length=4, alphabet=alphabet),
        alphabet=alphabet,
        initial=["AAAA", "ABAB", "ABBA", "AAAD"],
        is_mutable=torch.ones(4, dtype=torch.bool),
        learn_feasibility=True,
        target_value=None,
        tokenizer=state_tokenizer(alphabet),
    )
    values = torch.tensor(
        [0.0, 0.0, 0.0, -math.inf]
    )  # AAAD is infeasible: AD, its only unseen bigram, is forbidden
    # Acquisition order: ADAA has two unseen bigrams (AD, DA), BAAD the forbidden AD, AAAC one unknown (AC).
    proposals = problem.encode(["ADAA", "BAAD", "AAAC", "BAAA", "AABA"])
    parents = problem.encode(["AAAA"] * 5)
    chosen = {}
    for explore in (0.0, 1 / 3):
        loop = ClosedLoop(
            problem, LoopConfig(kmer_screen=2, kmer_explore=explore, explore_feasible_frac=None)
        )
        loop.states, loop.values = problem.initial_states, values
        assert loop.forbidden_kmers().tolist() == [0 + 3 * 4]  # AD: A + 4 * D in base 4
        chosen[explore] = problem.decode(loop.select_batch(proposals, parents, 2))
    assert chosen[0.0] == ["BAAA", "AABA"]  # fully seen only
    assert chosen[1 / 3] == ["AAAC", "BAAA"]  # round(2 / 3) = 1 slot explores AC; AD is never tested


def _toy_constrained_problem(initial: list[str]) -> DesignProblem:
    alphabet = "ABCD"
    return DesignProblem(
        name="toy",
        black_box=FunctionBlackBox(lambda batch: [0.0] * len(batch), length=4, alphabet=alphabet),
        alphabet=alphabet,
        initial=initial,
        is_mutable=torch.ones(4, dtype=torch.bool),
        learn_feasibility=True,
        target_value=None,
        tokenizer=state_tokenizer(alphabet),
    )


def test_explore_feasible_frac_sets_the_quota_from_the_measured_rate_of_unseen_kmers():
    """Round 1 measured three sequences with one bigram unseen in round 0 (two feasible, one not) and one with
    two unseen (left out): the rate is (2 + 1) / (3 + 2) = 0.6, so a 0.9 floor admits floor(10 * 0.1 / 0.4) = 2
    explorers in a batch of 10; with no such row yet the uniform prior gives 0.5 (2 of 10); a floor of 0.5 at
    rate 0.6 admits the whole batch."""
    problem = _toy_constrained_problem(["AAAA", "ABAB", "AAAB", "AAAC", "ADAA", "CAAA"])
    mean = {
        "explore_rate_quantile": None,
        "feasible_floor_scope": "round",
    }  # posterior mean, each batch alone
    loop = ClosedLoop(problem, LoopConfig(kmer_screen=2, explore_feasible_frac=0.9, **mean))
    # Round 0 sees AA, AB, BA. Round 1: AAAC (AC unseen) feasible, ADAA (AD, DA unseen: two) infeasible,
    # AAAB (all seen) feasible, CAAA (CA unseen) feasible; add BAAD (AD unseen) infeasible.
    loop.states = torch.cat([problem.initial_states, problem.encode(["BAAD"])])
    loop.values = torch.tensor([0.0, 0.0, 0.0, 0.0, -math.inf, 0.0, -math.inf])
    loop.rounds = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    assert loop.unseen_kmer_feasible_rate() == pytest.approx(3 / 5)
    assert loop.explore_quota(10) == 2
    prior = ClosedLoop(problem, LoopConfig(kmer_screen=2, explore_feasible_frac=0.9, **mean))
    prior.states, prior.values, prior.rounds = loop.states[:2], loop.values[:2], loop.rounds[:2]
    assert prior.unseen_kmer_feasible_rate() == 0.5
    assert prior.explore_quota(10) == 2
    loose = ClosedLoop(problem, LoopConfig(kmer_screen=2, explore_feasible_frac=0.5, **mean))
    loose.states, loose.values, loose.rounds = loop.states, loop.values, loop.rounds
    assert loose.explore_quota(10) == 10
    # The quota reaches the batch: DAAA (DA unseen, not proved forbidden) goes first; AAAD holds the forbidden
    # AD (BAAD's only unseen bigram) and ABBB two unseen windows, so neither explores.
    proposals = problem.encode(["ABBB", "AAAD", "DAAA", "BAAA", "ABAA"])
    parents = problem.encode(["AAAA"] * 5)
    assert problem.decode(loose.select_batch(proposals, parents, 3)) == ["DAAA", "BAAA", "ABAA"]
    # Quota 0 at the 0.9 floor; the fill (AAAD: the forbidden AD) cannot keep the floor, so the round measures 2.
    assert problem.decode(loop.select_batch(proposals, parents, 3)) == ["BAAA", "ABAA"]


def test_explorer_quota_plans_with_a_low_quantile_of_the_feasible_rate():
    """By default the quota plans with the 0.1 quantile of the rate's Beta posterior, not its mean: from the
    uniform prior p = 0.1, so a 0.9 floor admits floor(128 * 0.1 / 0.9) = 14 explorers of 128, not 25 (at the
    mean 0.5, of which Ehrlich medium's 16-36 % feasible explorers took the rounds to 84-88 %). With 2 feasible
    and 1 infeasible one-unseen rows (Beta(3, 2)) p is its 0.1 quantile, below the mean 0.6, so fewer explorers;
    and even when every explorer turns out infeasible the batch holds floor(0.1 * 128) = 12 of them."""
    problem = _toy_constrained_problem(["AAAA", "ABAB", "AAAB", "AAAC", "ADAA", "CAAA"])
    config = LoopConfig(kmer_screen=2, explore_feasible_frac=0.9, feasible_floor_scope="round")
    quantile = ClosedLoop(problem, config)
    quantile.states, quantile.values = problem.initial_states[:2], torch.zeros(2)
    quantile.rounds = torch.zeros(2, dtype=torch.int64)
    assert quantile.unseen_kmer_feasible_counts() == (0, 0)
    assert quantile.unseen_kmer_feasible_rate() == pytest.approx(0.1)
    assert quantile.explore_quota(128) == 14
    quantile.states = torch.cat([problem.initial_states, problem.encode(["BAAD"])])
    quantile.values = torch.tensor([0.0, 0.0, 0.0, 0.0, -math.inf, 0.0, -math.inf])
    quantile.rounds = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    assert quantile.unseen_kmer_feasible_counts() == (2, 1)
    rate = quantile.unseen_kmer_feasible_rate()
    assert rate == pytest.approx(scipy.stats.beta.ppf(0.1, 3, 2)) and rate < 0.5
    assert 12 <= quantile.explore_quota(128) == math.floor(128 * 0.1 / (1 - rate)) < math.floor(12.8 / 0.4)
    with pytest.raises(ValueError, match=r"explore_rate_quantile is 1\.5"):
        LoopConfig(explore_rate_quantile=1.5)


def test_feasible_floor_over_the_run_spends_earlier_surplus_and_repays_a_deficit():
    """With feasible_floor_scope "run" (default "round") the quota keeps the feasible fraction of the run's proposals
    and the batch together at 0.9: after 20 proposals all feasible (surplus 2) a batch of 10 at rate 0.5 takes
    floor((20 + 10 - 27) / 0.5) = 6 explorers (per batch: 2); after 20 with 4 infeasible (deficit 2) none, and the
    floor then drops the batch's risky rows; with nothing measured yet it is the per-batch quota."""
    problem = _toy_constrained_problem(["AAAA", "ABAB"])
    mean = {"explore_rate_quantile": None}
    loop = ClosedLoop(
        problem, LoopConfig(kmer_screen=2, explore_feasible_frac=0.9, feasible_floor_scope="run", **mean)
    )
    per_batch = ClosedLoop(problem, LoopConfig(kmer_screen=2, explore_feasible_frac=0.9, **mean))
    measured = torch.cat([problem.initial_states, problem.initial_states[[0]].repeat(20, 1)])
    for run in (loop, per_batch):
        run.states, run.values = problem.initial_states, torch.zeros(2)
        run.rounds = torch.zeros(2, dtype=torch.int64)
    assert loop.measured_proposals() == (0, 0) and loop.explore_quota(10) == per_batch.explore_quota(10) == 2
    for run in (loop, per_batch):
        run.states, run.values = measured, torch.zeros(22)
        run.rounds = torch.tensor([0, 0] + [1] * 20)
    assert loop.measured_proposals() == (20, 20)
    assert loop.unseen_kmer_feasible_rate() == 0.5  # no one-unseen row measured: the prior's mean
    assert loop.explore_quota(10) == 6 and per_batch.explore_quota(10) == 2
    loop.values = torch.tensor([0.0, 0.0] + [-math.inf] * 4 + [0.0] * 16)
    loop.values[2] = math.nan  # unknown: left out of N
    assert loop.measured_proposals() == (16, 19)
    assert loop.explore_quota(10) == 0
    batch = problem.encode(["AAAA", "ABAB", "DAAA"])
    assert loop.within_feasible_floor(batch, torch.tensor([0, 0, 1])).tolist() == [True, True, False]
    with pytest.raises(ValueError, match=r"feasible_floor_scope is 'batch'"):
        LoopConfig(feasible_floor_scope="batch")


def test_feasible_floor_drops_the_fill_then_the_last_explorers():
    """An ordered batch [explorer, seen, seen, two unseen windows, forbidden] is feasible with probabilities
    [0.6, 1, 1, 0.36, 0] (measured rate 0.6): at a 0.9 floor the forbidden row, the fill and the explorer go
    (2 of 2 >= 0.9); at 0.5 the expected fraction 2.96 / 5 already holds."""
    problem = _toy_constrained_problem(["AAAA", "ABAB", "AAAB", "AAAC", "ADAA", "CAAA", "BAAD"])
    values = torch.tensor([0.0, 0.0, 0.0, 0.0, -math.inf, 0.0, -math.inf])
    batch = problem.encode(["DAAA", "BAAA", "ABAA", "ABBB", "AAAD"])
    tiers = torch.tensor([-1, 0, 0, 2, 1])
    kept = {}
    for floor in (0.9, 0.5):
        loop = ClosedLoop(
            problem,
            LoopConfig(
                kmer_screen=2,
                explore_feasible_frac=floor,
                explore_rate_quantile=None,
                feasible_floor_scope="round",
            ),
        )
        loop.states, loop.values = problem.initial_states, values
        loop.rounds = torch.tensor([0, 0, 1, 1, 1, 1, 1])
        kept[floor] = loop.within_feasible_floor(batch, tiers).tolist()
    assert kept[0.9] == [False, True, True, False, False]
    assert kept[0.5] == [True] * 5
    fixed = ClosedLoop(problem, LoopConfig(kmer_screen=2, kmer_explore=0.25, explore_feasible_frac=None))
    fixed.states, fixed.values, fixed.rounds = loop.states, loop.values, loop.rounds
    assert fixed.explore_quota(10) == 2  # round(2.5): the fixed fraction ignores the data


def test_safe_fill_adds_fully_seen_novel_single_mutants_best_acquisition_first():
    """The fill is every single mutant of the seeds whose bigrams were all measured feasible (AA, AB, BA here),
    new to the data and to the batch, one per (position, token) edit, in the fitted acquisition's order."""
    problem = _toy_constrained_problem(["AAAA", "ABAB", "BABA"])
    loop = ClosedLoop(problem, LoopConfig(kmer_screen=2, **TINY))
    loop.generator = torch.Generator().manual_seed(0)
    loop.states, loop.values = problem.initial_states, torch.tensor([0.0, 1.0, 2.0])
    loop.rounds = torch.zeros(3, dtype=torch.int64)
    model = loop.train_surrogate(0)
    objective = AcquisitionObjective([("objective", 0)], ["feasible"])
    seeds = problem.initial_states[[2, 1, 2]]  # repeats, as a LaMBO-2 population
    encode = lambda states: {"sequence": model.tokenize(problem.decode(states), root="sequence")}  # noqa: E731
    with torch.no_grad():
        objective.fit(model(root_inputs=encode(seeds), leaves=list(objective.leaves)).leaf_outputs)
    batch = problem.encode(["BAAA"])
    fill = loop.safe_fill(model, objective, seeds, batch, limit=100)
    expected, edits = set(), set()
    for seed in problem.decode(seeds[:2]):
        for p, t in itertools.product(range(4), "ABCD"):
            row = seed[:p] + t + seed[p + 1 :]
            pairs = {row[i : i + 2] for i in range(3)}
            if t != seed[p] and pairs <= {"AA", "AB", "BA"} and row not in {"AAAA", "ABAB", "BABA", "BAAA"}:
                expected.add(row)
                edits.add((p, t))
    rows = problem.decode(fill)
    assert set(rows) <= expected and len(rows) == len(set(rows)) == len(edits) > 0
    assert (loop.unseen_kmers(fill) == 0).all()
    with torch.no_grad():
        scores = objective(model(root_inputs=encode(fill), leaves=list(objective.leaves)).leaf_outputs)
    assert torch.equal(scores, scores.sort(descending=True).values)
    assert loop.safe_fill(model, objective, seeds, batch, limit=2).shape == (2, 4)


def test_feasible_floor_keeps_a_tiny_start_measuring_full_feasible_batches():
    """With the floor (default 0.9) a start of 8 Ehrlich sequences runs out of fully seen LaMBO-2 candidates; the
    safe fill completes every batch, and every proposal is feasible (before the fill such a run measured 8-9 of
    24)."""
    problem = build_problem("easy", seed=0, initial_size=8)
    config = LoopConfig(method="lambo", **{**TINY, "batch_size": 8, "lambo_steps": 1})
    result = ClosedLoop(problem, config).run()
    assert result.values.numel() == 8 + 2 * 8
    assert torch.isfinite(result.values[8:]).all()


def test_explore_feasible_frac_rejects_bad_values():
    with pytest.raises(ValueError, match=r"explore_feasible_frac is 1\.0"):
        LoopConfig(explore_feasible_frac=1.0)
    with pytest.raises(ValueError, match=r"kmer_explore is 0\.25 and explore_feasible_frac is 0\.9"):
        LoopConfig(kmer_explore=0.25, explore_feasible_frac=0.9)
    assert LoopConfig(kmer_explore=0.25, explore_feasible_frac=None).kmer_explore == 0.25


def test_state_saved_before_an_option_existed_resumes_while_it_is_as_that_run_behaved(easy, tmp_path):
    """A state whose config lacks an option (saved by an older version) resumes when the option has the value
    such a run behaved as (`PREDATED_OPTIONS`: explore_feasible_frac None, even if its default changes), and is
    refused otherwise."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    config = LoopConfig(method="ga", explore_feasible_frac=0.9, **{**TINY, "num_rounds": 1})
    ClosedLoop(easy, config, tmp_path).run()
    path = tmp_path / "loop_state.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    saved = json.loads(metadata["config"])
    del saved["explore_feasible_frac"]
    tensors = load_file(str(path))
    tensors["values"][-1] = 123.0  # a mark only a resumed run returns (a fresh one would recompute the value)
    save_file(tensors, str(path), metadata={**metadata, "config": json.dumps(saved)})
    with pytest.raises(ValueError, match="holds a run of problem"):
        ClosedLoop(easy, config, tmp_path).run()
    older = LoopConfig(method="ga", explore_feasible_frac=None, **{**TINY, "num_rounds": 1})
    resumed = ClosedLoop(easy, older, tmp_path).run().values
    assert resumed.numel() == 16 + 16 and resumed[-1] == 123.0
