"""LaMBO-2 sampler on a tiny tree trained on real RBD windows: constraints, monotone acceptance, resume,
unguided and gaussian variants, batched pseudo-log-likelihood, errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cortex.design.constraints import DesignConstraints
from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.pll import pll_from_terms
from cortex.design.state import DesignState
from cortex.design.tree_objectives import LeafMean


def make_sampler(model, constraints=None, **overrides) -> LaMBO2:
    settings = {"num_mutations_per_step": 3, "max_guidance_updates": 1, "kl_weight": 0.25, "seed": 3}
    settings.update(overrides)
    return LaMBO2(model, LeafMean("bind"), constraints, LaMBO2Config(**settings))


def test_constraints_hold_over_many_steps(tiny_model, rbd_seeds):
    allowed = {5: "AGS", 6: "KR"}
    constraints = DesignConstraints(
        immutable_positions=[0, 1, 2, 10],
        allowed_tokens=allowed,
        max_edit_distance=2,
        fixed_length=True,
        predicates=[lambda seqs: ["C" not in s[12:18] for s in seqs]],
    )
    # Seeds with C at 12..17 would violate the predicate from the start; keep the ones that do not.
    seeds = [s for s in rbd_seeds if "C" not in s[12:18]][:4]
    sampler = make_sampler(tiny_model, constraints, resample_edit_positions=True)
    state = sampler.init_state(seeds)
    total_accepted = 0
    for _ in range(4):
        output = sampler.step(state)
        state = output.state
        total_accepted += int(state.num_accepted.sum())
        for seed, row in zip(seeds, state.history[-len(seeds) :]):
            candidate = row["sequence"]
            assert len(candidate) == len(seed)
            assert "-" not in candidate
            assert candidate[:3] == seed[:3] and candidate[10] == seed[10]
            for position, residues in allowed.items():
                assert candidate[position] == seed[position] or candidate[position] in residues
            assert sum(a != b for a, b in zip(candidate, seed)) == row["edit_distance"] <= 2
            assert "C" not in candidate[12:18]
    assert total_accepted > 0, "no proposal was ever accepted: the test would prove nothing"


def test_blended_score_never_decreases_within_a_step(tiny_model, rbd_seeds):
    sampler = make_sampler(tiny_model, resample_edit_positions=True)
    state = sampler.init_state(rbd_seeds)
    weight = sampler.config.acceptance_pll_weight
    for _ in range(3):
        is_excluded = ~(sampler.corruptible_tokens[state.input_ids] & state.attention_mask.bool())
        before = sampler.blend(state.objective, state.input_ids, state.attention_mask, is_excluded, weight)
        state = sampler.step(state).state
        after = torch.tensor([row["score"] for row in state.history[-len(rbd_seeds) :]])
        assert torch.all(after >= before - 1e-6)
        # The stored objective is the objective of the stored candidates.
        rescored = sampler._fit_and_score(state.input_ids, state.attention_mask)
        torch.testing.assert_close(rescored, state.objective, atol=1e-5, rtol=1e-5)


def test_resume_equals_uninterrupted_run(tiny_model, rbd_seeds, tmp_path):
    straight = make_sampler(tiny_model, resample_edit_positions=True).run(rbd_seeds, num_steps=3)
    sampler = make_sampler(tiny_model, resample_edit_positions=True)
    sampler.run(rbd_seeds, num_steps=1).save(tmp_path / "state")
    resumed_sampler = make_sampler(tiny_model, resample_edit_positions=True)
    state = DesignState.load(tmp_path / "state")
    for _ in range(2):
        state = resumed_sampler.step(resumed_sampler.resume(state) if state.step == 1 else state).state
    assert torch.equal(state.input_ids, straight.input_ids)
    torch.testing.assert_close(state.objective, straight.objective)
    assert state.history == straight.history
    frame = state.history_frame()
    assert list(frame["step"].unique()) == [0, 1, 2, 3]
    assert state.history_dataset().num_rows == 4 * len(rbd_seeds)


def test_unguided_and_gaussian_variants_run(tiny_model, rbd_seeds):
    unguided = make_sampler(tiny_model, max_guidance_updates=0)
    output = unguided.step(unguided.init_state(rbd_seeds))
    assert "design_loss" not in output.metrics and output.state.step == 1
    gaussian = make_sampler(tiny_model, corruption="gaussian")
    output = gaussian.step(gaussian.init_state(rbd_seeds))
    assert output.metrics["num_corrupted"] == 3.0
    assert output.metrics["design_loss"] == pytest.approx(output.metrics["design_loss"])  # finite
    assert torch.isfinite(torch.tensor(output.metrics["design_loss"]))


def test_guidance_changes_samples_and_is_seeded(tiny_model, rbd_seeds):
    first = make_sampler(tiny_model, max_guidance_updates=3, guidance_step_size=5.0).run(rbd_seeds, 2)
    again = make_sampler(tiny_model, max_guidance_updates=3, guidance_step_size=5.0).run(rbd_seeds, 2)
    other = make_sampler(tiny_model, max_guidance_updates=3, guidance_step_size=5.0, seed=4).run(rbd_seeds, 2)
    assert first.history == again.history
    assert first.history != other.history


def test_batched_pseudo_log_likelihood_equals_one_forward_per_position(tiny_model, rbd_seeds):
    sampler = make_sampler(tiny_model, pll_batch_size=7)  # chunks that split candidates of one position
    encoded = tiny_model.tokenize([*rbd_seeds[:3], rbd_seeds[3][:15]])
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    is_excluded = ~(sampler.corruptible_tokens[ids] & mask.bool())
    batched = sampler.pseudo_log_likelihood(ids, mask, is_excluded)
    # The original's loop (spec 2.7): column j masked in every row, one forward each.
    scores = []
    with torch.no_grad():
        for j in range(ids.shape[1]):
            occluded = ids.clone()
            occluded[:, j] = sampler.mask_token_id
            logits = tiny_model(input_ids=occluded, attention_mask=mask).leaf_outputs["protein_mlm"].logits
            scores.append(
                torch.log_softmax(logits[:, :, j], -1)
                .gather(-1, ids[None, :, j, None].expand(logits.shape[0], -1, 1))[..., 0]
                .mean(0)
            )
    conditional = torch.stack(scores, dim=1)
    included = (~is_excluded).float()
    expected = (conditional * included).sum(-1) / included.sum(-1)
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=1e-5)


def test_model_gradients_untouched(tiny_model, rbd_seeds):
    for parameter in tiny_model.parameters():
        parameter.grad = None
    sampler = make_sampler(tiny_model)
    sampler.step(sampler.init_state(rbd_seeds[:2]))
    assert all(parameter.grad is None for parameter in tiny_model.parameters())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"kl_weight": 1.5}, "kl_weight is 1.5"),
        ({"corruption": "blur"}, "corruption is 'blur'"),
        ({"num_mutations_per_step": 0}, "num_mutations_per_step is 0"),
        ({"max_guidance_updates": -1}, "max_guidance_updates is -1"),
        ({"noise_schedule": "cosine"}, "noise_schedule is 'cosine'"),
    ],
)
def test_bad_config_is_named(overrides, match):
    with pytest.raises(ValueError, match=match):
        LaMBO2Config(**overrides)


def test_bad_wiring_is_named(tiny_model, rbd_seeds):
    with pytest.raises(ValueError, match="missing \\['nope'\\]"):
        LaMBO2(tiny_model, LeafMean("nope"))
    with pytest.raises(ValueError, match="mlm_leaf 'bind'"):
        LaMBO2(tiny_model, LeafMean("bind"), config=LaMBO2Config(mlm_leaf="bind"))
    sampler = make_sampler(tiny_model)
    with pytest.raises(ValueError, match="unknown residue 'J'"):
        sampler.init_state(["ACDJ"])
    with pytest.raises(ValueError, match="expected a non-empty list"):
        sampler.init_state("ACDE")


def test_acquisition_objective_binds_leaves(tiny_model, rbd_seeds):
    from cortex.design.tree_objectives import AcquisitionObjective

    objective = AcquisitionObjective(["bind"])
    with pytest.raises(ValueError, match="not fitted"):
        objective({})
    sampler = LaMBO2(tiny_model, objective, config=LaMBO2Config(max_guidance_updates=1, kl_weight=0.0))
    state = sampler.init_state(rbd_seeds)
    # Noisy log EI of the seeds against their own best prediction: the best seed is at the incumbent.
    best = objective.values(sampler._forward_ids(state.input_ids, state.attention_mask, ["bind"]))[0]
    assert state.objective.shape == (len(rbd_seeds),)
    assert int(state.objective.argmax()) == int(best.mean(0)[:, 0].argmax())
    state = sampler.step(state).state
    assert torch.isfinite(state.objective).all()


class PlainLaMBO2(LaMBO2):
    """The algorithm without PLL shortcuts: the starting population is rescored every step and every proposal's
    PLL is computed at every included position. Counts the occlusions it scores."""

    scored_pairs = 0

    def pll_terms(self, input_ids, attention_mask, positions):
        type(self).scored_pairs += int(positions.sum())
        return super().pll_terms(input_ids, attention_mask, positions)

    def proposal_scores(
        self, proposal, proposal_objective, candidates, candidate_terms, reference, mask, excluded
    ):
        terms = self.pll_terms(proposal, mask, ~excluded)
        pll = pll_from_terms(terms, excluded)
        return self.blend_values(proposal_objective, pll, self.config.acceptance_pll_weight), pll, terms

    def step(self, state):
        return super().step(dataclasses.replace(state, pll=None, pll_terms=None))


class CountingLaMBO2(LaMBO2):
    scored_pairs = 0

    def pll_terms(self, input_ids, attention_mask, positions):
        type(self).scored_pairs += int(positions.sum())
        return super().pll_terms(input_ids, attention_mask, positions)


def test_pll_shortcuts_give_the_plain_algorithms_populations(tiny_model, rbd_seeds):
    settings = {"num_mutations_per_step": 3, "max_guidance_updates": 2, "kl_weight": 0.25, "seed": 5,
                "resample_edit_positions": True, "guidance_step_size": 2.0}  # fmt: skip
    fast = CountingLaMBO2(tiny_model, LeafMean("bind"), config=LaMBO2Config(**settings)).run(rbd_seeds, 4)
    plain = PlainLaMBO2(tiny_model, LeafMean("bind"), config=LaMBO2Config(**settings, pll_window=False)).run(
        rbd_seeds, 4
    )
    assert torch.equal(fast.input_ids, plain.input_ids)
    for ours, theirs in zip(fast.history, plain.history, strict=True):
        assert ours["sequence"] == theirs["sequence"] and ours["accepted"] == theirs["accepted"]
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
    assert sum(row["accepted"] for row in fast.history) > 0
    # The PLL carried in the state is the PLL of the final candidates, and fewer occlusions were scored.
    sampler = make_sampler(tiny_model)
    torch.testing.assert_close(fast.pll, sampler.candidate_pll(fast.input_ids, fast.attention_mask))
    torch.testing.assert_close(
        fast.pll_terms, sampler.candidate_pll_terms(fast.input_ids, fast.attention_mask), atol=1e-5, rtol=0
    )
    assert CountingLaMBO2.scored_pairs < PlainLaMBO2.scored_pairs
