"""LaMBO-2 end to end against the original (tests/parity/lambo_step*): the fixture's tiny tree is converted from
its original state dict (`cortex.model.conversion`), each recorded step is replayed with `LaMBO2.step` from the
recorded base population and the recorded `torch.manual_seed`, and the step's intermediate quantities (occlusion
saliency, edit-position probabilities and draws, PLL, masked tokens, trunk latents, guidance-loss terms, samples,
acceptances) and outputs are compared with the recorded ones. Everything is read from the fixture's JSON and
tensors (objective leaf, sampler arguments, seeds, immutable columns), so other fixtures run unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cortex.design.lambo as lambo_module
from cortex.design.constraints import DesignConstraints
from cortex.design.guidance import edit_position_probs, normalize_saliency
from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.pll import pll_from_terms
from cortex.design.state import DesignState
from cortex.design.tree_objectives import LeafMean
from cortex.model.conversion import convert_v1_checkpoint

pytestmark = pytest.mark.parity

PARITY = Path(__file__).resolve().parents[1] / "parity"
FIXTURES = sorted(p.stem for p in PARITY.glob("lambo_step*.json"))
TOL = {"atol": 1e-5, "rtol": 1e-4}


class RecordingLaMBO2(LaMBO2):
    """Keeps the inputs and outputs of the step's parts (the sampler's own methods, unchanged)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records: dict[str, list] = {}

    def _keep(self, name, value):
        self.records.setdefault(name, []).append(value)
        return value

    def occlusion_saliency(self, *args):
        return self._keep("saliency", super().occlusion_saliency(*args))

    def draw_edit_positions(self, probs, is_editable, generator):
        self._keep("position_probs", probs)
        return self._keep("edit_positions", super().draw_edit_positions(probs, is_editable, generator))

    def candidate_pll_terms(self, input_ids, attention_mask):
        terms = super().candidate_pll_terms(input_ids, attention_mask)
        self._keep("pll", pll_from_terms(terms, self._excluded(input_ids, attention_mask)))
        return terms

    def corrupt(self, *args):
        return self._keep("corrupt", super().corrupt(*args))

    def sample_tokens(self, token_logits, token_mask, input_ids, is_corrupted, generator):
        self._keep("token_logits", token_logits)
        return self._keep(
            "sample", super().sample_tokens(token_logits, token_mask, input_ids, is_corrupted, generator)
        )

    def proposal_scores(self, proposal, proposal_objective, *args):
        self._keep("sample_objective", proposal_objective)
        return super().proposal_scores(proposal, proposal_objective, *args)


def _fixture(name: str):
    meta = json.loads((PARITY / f"{name}.json").read_text())
    tensors = load_file(str(PARITY / f"{name}.safetensors"))
    tree = meta["tree"]
    model = convert_v1_checkpoint(load_file(str(PARITY / tree["state_dict"])), PARITY / tree["config"])
    (leaf,) = re.findall(r"fetch_task_outputs\('(\w+)'\)\['loc'\]", meta["objective"])
    return meta, tensors, model, leaf


@pytest.mark.parametrize("name", FIXTURES)
def test_lambo_step_matches_the_original(name, monkeypatch):
    meta, t, model, leaf = _fixture(name)
    kwargs = meta["lambo_kwargs"]
    assert kwargs["guidance_layer"] == "trunk" and kwargs["constraint_fn"] is None
    is_mutable = t["is_mutable"]
    immutable = [int(j) for j in (~is_mutable).all(0).nonzero()[:, 0]]
    guidance_terms = []
    real_guidance_loss = lambo_module.guidance_loss
    monkeypatch.setattr(
        lambo_module,
        "guidance_loss",
        lambda *a: guidance_terms.append(real_guidance_loss(*a)) or guidance_terms[-1],
    )
    previous_positions = None
    for step in meta["steps"]:
        k = step["step_index"]
        p = f"step{k}."
        config = LaMBO2Config(
            num_mutations_per_step=kwargs["num_mutations_per_step"],
            max_guidance_updates=kwargs["max_guidance_updates"],
            guidance_step_size=kwargs["guidance_step_size"],
            kl_weight=kwargs["kl_weight"],
            feature_attr_temp=kwargs["feature_attr_temp"],
            exclude_initial_solution=kwargs["exclude_initial_solution"],
            resample_edit_positions=kwargs["resample_edit_positions"],
            legacy_raw_null_embedding=True,  # the fixture records the original's raw mask row (A18)
        )
        sampler = RecordingLaMBO2(
            model, LeafMean(leaf), DesignConstraints(immutable_positions=immutable), config
        )
        base = t[p + "base_tok_idxs"]
        mask = (base != sampler.tokenizer.pad_token_id).long()
        objective = sampler._fit_and_score(base, mask)
        torch.testing.assert_close(objective, t[p + "base_obj_vals"], **TOL)
        generator = torch.Generator().manual_seed(step["torch_manual_seed_before_step"])
        state = DesignState(
            input_ids=base, attention_mask=mask, seed_ids=t["params"], objective=objective,
            edit_positions=previous_positions if previous_positions is not None else torch.zeros_like(is_mutable),
            num_accepted=torch.zeros(base.shape[0], dtype=torch.long), generator_state=generator.get_state(),
            step=step["step_count_at_entry"],
        )  # fmt: skip
        sampler._bind(state)
        guidance_terms.clear()
        output = sampler.step(state)
        r = sampler.records

        # 1. edit positions: saliency, probabilities, the multinomial draw.
        if step["edit_positions_reselected"]:
            torch.testing.assert_close(r["saliency"][0], t[p + "coord.approx_occlusion_scores"], **TOL)
            probs = edit_position_probs(normalize_saliency(r["saliency"][0]), config.feature_attr_temp)
            torch.testing.assert_close(probs, t[p + "coord.position_probs"], **TOL)
            torch.testing.assert_close(r["position_probs"][0], t[p + "coord.position_probs"], **TOL)
        assert torch.equal(output.state.edit_positions, t[p + "corruption_allowed"])
        previous_positions = output.state.edit_positions
        # Reference PLL of the base population (first PLL of the step), then the masked tokens and latents.
        torch.testing.assert_close(r["pll"][0], t[p + "tgt_pll"], **TOL)
        (root_inputs, is_corrupted) = r["corrupt"][0]
        assert torch.equal(is_corrupted, t[p + "masked.is_corrupted"])
        assert torch.equal(root_inputs["input_ids"], t[p + "masked.src_tok_idxs"])
        with torch.no_grad():
            _, trunk = model.forward_trunk({sampler.root: root_inputs})
        torch.testing.assert_close(trunk.last_hidden_state, t[p + "latent.activations"], **TOL)

        # 3-5. per update: logits at corrupted positions, samples, their objective, acceptance; loss terms.
        accepted_total = torch.zeros(base.shape[0], dtype=torch.long)
        for j, update in enumerate(step["updates"]):
            q = f"{p}update{j}."
            logits = r["token_logits"][j][is_corrupted]
            torch.testing.assert_close(logits, t[q + "decode_logits_masked"], **TOL)
            assert torch.equal(r["sample"][j], t[q + "sample_tok_idxs"])
            torch.testing.assert_close(r["sample_objective"][j], t[q + "sample_obj_raw"], **TOL)
            accepted_total += torch.tensor(update["accepted"]).long()
        for j, terms in enumerate(guidance_terms):
            recorded = step["guidance_metrics_per_update"][j]
            for ours, theirs in [("loss", "masked_design_loss"), ("kl", "masked_token_loss"),
                                 ("objective_loss", "masked_obj_loss"), ("entropy", "token_entropy")]:  # fmt: skip
                assert float(getattr(terms, ours).detach()) == pytest.approx(
                    recorded[theirs], rel=1e-4, abs=1e-5
                )
        assert len(guidance_terms) == kwargs["max_guidance_updates"]
        assert torch.equal(output.state.num_accepted, accepted_total)
        assert torch.equal(output.state.input_ids, t[p + "final_tok_idxs"])
        score = torch.tensor([row["score"] for row in output.state.history[-base.shape[0] :]])
        torch.testing.assert_close(score, t[p + "final_obj_vals"], **TOL)
        returned = step["metrics_returned"]
        assert output.metrics["design_loss_grad_norm"] == pytest.approx(
            returned["masked_design_loss_grad_norm"], rel=1e-3
        )
