"""LaMBO-2 guidance math: occlusion saliency, edit-position draws, design loss, noise-level schedules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cortex.data.tokenization import ProteinTokenizer
from cortex.design.guidance import (
    InverseSqrtSchedule,
    LinearSchedule,
    approximate_occlusion,
    edit_position_probs,
    guidance_loss,
    normalize_saliency,
    positions_to_mask,
    reference_token_probs,
    sample_edit_positions,
)

PARITY = Path(__file__).resolve().parents[1] / "parity"


def _temperature_key(temperature: str) -> str:
    return "temp" + temperature.replace(".", "p")


def _normalised_embeddings(tree: str, input_ids: torch.Tensor) -> torch.Tensor:
    # The original root embeds tokens as L2-normalised rows x sqrt(D) (quirk A6); the fixture omits them.
    state = load_file(str(PARITY / f"{tree}_state_dict.safetensors"))
    (key,) = [k for k in state if k.startswith("root_nodes.") and k.endswith(".tok_encoder.weight")]
    weight = state[key]
    return torch.nn.functional.normalize(weight[input_ids], dim=-1) * weight.shape[1] ** 0.5


def test_approximate_occlusion_is_the_first_order_change_of_a_linear_score():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(3, 5, 4, generator=generator)
    embeds = torch.randn(3, 5, 4, generator=generator)
    null = torch.randn(4, generator=generator)
    is_excluded = torch.zeros(3, 5, dtype=torch.bool)
    is_excluded[0, 1] = True
    # score(E) = sum(direction * E) is linear, so the Taylor estimate is exact.
    scores = approximate_occlusion(direction, embeds, null, is_excluded)
    for b, position in [(0, 0), (1, 3), (2, 4)]:
        occluded = embeds.clone()
        occluded[b, position] = null
        exact = (direction[b] * occluded[b]).sum() - (direction[b] * embeds[b]).sum()
        torch.testing.assert_close(scores[b, position], exact)
    assert scores[0, 1] == -math.inf


def test_saliency_normalisation_and_probabilities():
    scores = torch.tensor([[1.0, -3.0, -math.inf, 4.0], [-math.inf, 0.5, 0.5, -math.inf]])
    normalised = normalize_saliency(scores)
    torch.testing.assert_close(normalised[0, [0, 1, 3]], torch.tensor([1.0, -3.0, 4.0]) / (8.0 + 1e-6))
    assert normalised[0, 2] == -math.inf
    probs = edit_position_probs(normalised, temperature=0.5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    assert probs[0, 2] == 0 and probs[1, 0] == 0
    assert probs[0, 3] > probs[0, 0] > probs[0, 1]
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        edit_position_probs(normalised, temperature=0)


def test_sample_edit_positions_sorted_distinct_and_feasible():
    probs = torch.tensor([[0.1, 0.0, 0.4, 0.2, 0.3], [0.0, 0.0, 1.0, 1.0, 0.0]])
    positions = sample_edit_positions(probs, 2, torch.Generator().manual_seed(0))
    assert positions.dtype == torch.int64 and positions.shape == (2, 2)
    assert (positions.diff(dim=-1) > 0).all()
    assert torch.equal(positions[1], torch.tensor([2, 3]))
    assert (probs.gather(1, positions) > 0).all()
    mask = positions_to_mask(positions, 5)
    assert torch.equal(mask.sum(-1), torch.tensor([2, 2])) and mask[1, 2] and mask[1, 3]
    with pytest.raises(ValueError, match="row 1 has 2 editable positions"):
        sample_edit_positions(probs, 3)
    with pytest.raises(ValueError, match=r"num_positions must be an int in \[1, 5\], got 6"):
        sample_edit_positions(probs, 6)


def test_guidance_loss_terms():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, generator=generator)
    is_samplable = torch.tensor([True, True, True, True, False, False])
    base = reference_token_probs(logits, is_samplable)
    assert (base[..., 4:] == 1e-6).all()
    is_corrupted = torch.tensor([[True, False, True], [False, False, True]])
    objective = torch.tensor([1.0, 3.0])
    terms = guidance_loss(logits, base, objective, is_corrupted, kl_weight=0.25)
    guided = torch.distributions.Categorical(logits=logits)
    reference = torch.distributions.Categorical(probs=base)
    expected_kl = torch.distributions.kl_divergence(guided, reference)[is_corrupted].mean()
    torch.testing.assert_close(terms.kl, expected_kl)
    assert terms.kl > 0  # banned tokens make the reference differ from the guided distribution
    torch.testing.assert_close(terms.entropy, guided.entropy()[is_corrupted].mean())
    torch.testing.assert_close(terms.objective_loss, torch.tensor(-2.0))
    torch.testing.assert_close(terms.loss, 0.25 * expected_kl + 0.75 * -2.0)
    # Identical distributions: KL 0; no corrupted position: KL 0, not NaN.
    same = guidance_loss(logits, torch.softmax(logits, -1), objective, is_corrupted, kl_weight=1.0)
    torch.testing.assert_close(same.kl, torch.tensor(0.0), atol=1e-6, rtol=0)
    none = guidance_loss(logits, base, objective, torch.zeros_like(is_corrupted), kl_weight=0.5)
    assert none.kl == 0
    with pytest.raises(ValueError, match=r"kl_weight must be in \[0, 1\], got 1\.5"):
        guidance_loss(logits, base, objective, is_corrupted, kl_weight=1.5)


def test_guidance_loss_gradient_flows_to_logits():
    logits = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(1), requires_grad=True)
    base = reference_token_probs(logits, torch.ones(5, dtype=torch.bool))
    objective = logits[..., 0].sum(-1)
    terms = guidance_loss(logits, base, objective, torch.ones(1, 4, dtype=torch.bool), kl_weight=0.5)
    terms.loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_noise_level_schedules():
    schedule = InverseSqrtSchedule()
    assert [round(schedule(k), 6) for k in range(4)] == [1.0, 0.707107, 0.57735, 0.5]
    linear = LinearSchedule(start=1.0, end=0.2, num_steps=4)
    assert [linear(k) for k in (0, 2, 4, 9)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        schedule(-1)
    with pytest.raises(ValueError, match="end must be in \\[0, 1\\], got 2"):
        LinearSchedule(end=2)


@pytest.mark.parity
@pytest.mark.parametrize("tree", ["tiny_tree", "tiny_tree_transformer"])
def test_occlusion_and_edit_positions_match_original(tree):
    meta = json.loads((PARITY / "occlusion.json").read_text())["trees"][tree]
    tensors = load_file(str(PARITY / "occlusion.safetensors"))
    input_ids = tensors[f"{tree}.tok_idxs"]
    tokenizer = ProteinTokenizer()
    is_mutable = tensors[f"{tree}.is_mutable"]
    is_excluded = ~(tokenizer.get_corruptible_mask(input_ids) & is_mutable)
    assert torch.equal(is_excluded, tensors[f"{tree}.is_excluded"])
    scores = approximate_occlusion(
        tensors[f"{tree}.emb_grad"],
        _normalised_embeddings(tree, input_ids),
        tensors[f"{tree}.null_embedding_raw"],
        is_excluded,
    )
    torch.testing.assert_close(scores, tensors[f"{tree}.approx_occlusion_scores"], rtol=1e-5, atol=1e-6)
    for temperature, settings in meta["temperatures"].items():
        prefix = f"{tree}.{_temperature_key(temperature)}"
        normalised = normalize_saliency(tensors[f"{tree}.approx_occlusion_scores"])
        torch.testing.assert_close(normalised, tensors[f"{prefix}.normalized_scores"], rtol=1e-6, atol=1e-7)
        probs = edit_position_probs(normalised, float(temperature))
        torch.testing.assert_close(probs, tensors[f"{prefix}.position_probs"], rtol=1e-5, atol=1e-7)
        generator = torch.Generator().manual_seed(settings["select_seed"])
        positions = sample_edit_positions(
            tensors[f"{prefix}.position_probs"], meta["num_mutations_per_step"], generator
        )
        assert torch.equal(positions, tensors[f"{prefix}.edit_idxs_sorted"])
        mask = positions_to_mask(positions, input_ids.shape[1])
        assert torch.equal(mask, tensors[f"{prefix}.corruption_allowed"])
        assert not (mask & is_excluded).any()


@pytest.mark.parity
@pytest.mark.parametrize("fixture", ["lambo_step", "lambo_step_transformer"])
def test_guidance_loss_matches_original_metrics(fixture):
    meta = json.loads((PARITY / f"{fixture}.json").read_text())
    tensors = load_file(str(PARITY / f"{fixture}.safetensors"))
    kl_weight = meta["lambo_kwargs"]["kl_weight"]
    is_samplable = ProteinTokenizer().samplable_token_mask
    for step, record in enumerate(meta["steps"]):
        is_corrupted = tensors[f"step{step}.masked.is_corrupted"]

        def unpack(masked_rows: torch.Tensor, is_corrupted: torch.Tensor = is_corrupted) -> torch.Tensor:
            # (M, V) rows stored in row-major (n, l) order -> (N, L, V), zeros at uncorrupted positions.
            full = torch.zeros(*is_corrupted.shape, masked_rows.shape[-1])
            full[is_corrupted] = masked_rows
            return full

        base = reference_token_probs(
            unpack(tensors[f"step{step}.update0.decode_logits_masked"]), is_samplable
        )
        for j, metrics in enumerate(record["guidance_metrics_per_update"]):
            key = f"step{step}.guidance{j}.objective_per_seq"
            if key not in tensors:
                continue
            guided = unpack(tensors[f"step{step}.update{j}.decode_logits_masked"])
            terms = guidance_loss(guided, base, tensors[key], is_corrupted, kl_weight)
            assert terms.kl.item() == pytest.approx(metrics["masked_token_loss"], rel=1e-5)
            assert terms.objective_loss.item() == pytest.approx(metrics["masked_obj_loss"], rel=1e-5)
            assert terms.loss.item() == pytest.approx(metrics["masked_design_loss"], rel=1e-5)
            assert terms.entropy.item() == pytest.approx(metrics["token_entropy"], rel=1e-5)
