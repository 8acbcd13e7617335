"""Design objectives checked against BoTorch's public acquisition functions on small cases."""

from __future__ import annotations

import pytest
import torch

from cortex.design.objectives import (
    EnsembleAcquisition,
    ObjectiveScaling,
    infer_ref_point,
    joint_objective_values,
    log_expected_hypervolume_improvement,
    log_expected_improvement,
    log_fatplus,
    noisy_log_expected_improvement,
)

botorch = pytest.importorskip("botorch")
from botorch.acquisition.logei import qLogExpectedImprovement  # noqa: E402
from botorch.acquisition.multi_objective.logei import qLogExpectedHypervolumeImprovement  # noqa: E402
from botorch.models.deterministic import GenericDeterministicModel  # noqa: E402
from botorch.utils.multi_objective.box_decompositions.non_dominated import (  # noqa: E402
    FastNondominatedPartitioning,
)
from botorch.utils.multi_objective.pareto import is_non_dominated  # noqa: E402


def _lookup_model(table: torch.Tensor) -> GenericDeterministicModel:
    # A deterministic "model" returning row X of `table` (B, M): BoTorch then sees exactly our predictions.
    return GenericDeterministicModel(lambda X: table[X[..., 0].long()], num_outputs=table.shape[-1])


def _candidates(batch_size: int) -> torch.Tensor:
    return torch.arange(batch_size, dtype=torch.float64).view(batch_size, 1, 1)


@pytest.mark.parametrize(("ensemble_size", "batch_size", "num_baseline"), [(1, 4, 3), (3, 6, 9)])
def test_noisy_log_ei_matches_botorch(ensemble_size, batch_size, num_baseline):
    generator = torch.Generator().manual_seed(ensemble_size)
    values = torch.randn(ensemble_size, batch_size, 1, dtype=torch.float64, generator=generator)
    baseline = torch.randn(ensemble_size, num_baseline, 1, dtype=torch.float64, generator=generator)
    ours = noisy_log_expected_improvement(values, baseline)
    reference = torch.stack(
        [
            qLogExpectedImprovement(model=_lookup_model(values[e]), best_f=baseline[e].max())(
                _candidates(batch_size)
            )
            for e in range(ensemble_size)
        ]
    ).mean(0)
    assert ours.shape == (batch_size,)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_log_fatplus_tracks_relu_and_stays_finite():
    x = torch.tensor([-5.0, -1e-3, 1e-3, 0.5, 3.0], dtype=torch.float64)
    values = log_fatplus(x)
    assert torch.isfinite(values).all()
    torch.testing.assert_close(values[2:], x[2:].log(), rtol=1e-2, atol=0)
    assert (values.diff() > 0).all()  # monotone
    # A candidate above the incumbent scores much higher than one below.
    scores = log_expected_improvement(
        torch.tensor([[[2.0], [0.0]]], dtype=torch.float64), torch.tensor([1.0])
    )
    assert scores[0] > scores[1] + 10


@pytest.mark.parametrize(("ensemble_size", "num_objectives"), [(1, 2), (2, 2), (3, 3)])
def test_log_ehvi_matches_botorch(ensemble_size, num_objectives):
    generator = torch.Generator().manual_seed(10 + num_objectives)
    batch_size = 5
    values = torch.randn(ensemble_size, batch_size, num_objectives, dtype=torch.float64, generator=generator)
    baseline = torch.randn(ensemble_size, 8, num_objectives, dtype=torch.float64, generator=generator)
    ref_point = infer_ref_point(baseline)
    ours = log_expected_hypervolume_improvement(values, baseline)
    reference = []
    for e in range(ensemble_size):
        front = baseline[e][is_non_dominated(baseline[e])]
        partitioning = FastNondominatedPartitioning(ref_point=ref_point, Y=front)
        acquisition = qLogExpectedHypervolumeImprovement(
            model=_lookup_model(values[e]), ref_point=ref_point, partitioning=partitioning
        )
        reference.append(acquisition(_candidates(batch_size)))
    torch.testing.assert_close(ours, torch.stack(reference).mean(0), rtol=1e-8, atol=1e-8)


def test_log_ehvi_prefers_points_beyond_the_front_and_is_differentiable():
    baseline = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]], dtype=torch.float64)
    values = torch.tensor([[[1.0, 1.0], [0.2, 0.2]]], dtype=torch.float64, requires_grad=True)
    scores = log_expected_hypervolume_improvement(values, baseline)
    assert scores[0] > scores[1] + 5
    scores.sum().backward()
    assert torch.isfinite(values.grad).all() and values.grad.abs().sum() > 0


def test_constraints_and_scaling():
    objectives = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    probs = torch.tensor([[[0.5], [0.25]]])
    torch.testing.assert_close(
        joint_objective_values(objectives, probs), torch.tensor([[[0.5, 1.0], [0.75, 1.0]]])
    )
    with pytest.raises(ValueError, match=r"constraint_probs has shape \(1, 2, 3\)"):
        joint_objective_values(objectives, torch.ones(1, 2, 3))
    scaling = ObjectiveScaling.fit(torch.tensor([[[-2.0, 10.0], [2.0, 30.0]]]))
    torch.testing.assert_close(scaling(torch.tensor([-2.0, 20.0])), torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="fitted on 2"):
        scaling(torch.zeros(3))


@pytest.mark.parametrize("num_objectives", [1, 2])
def test_ensemble_acquisition(num_objectives):
    generator = torch.Generator().manual_seed(num_objectives)
    baseline = torch.randn(2, 6, num_objectives, dtype=torch.float64, generator=generator)
    acquisition = EnsembleAcquisition(baseline, fit_scaling=True)
    best = baseline.amax(dim=(0, 1)) + 1.0
    worst = baseline.amin(dim=(0, 1)) - 1.0
    candidates = torch.stack([best, worst]).expand(2, 2, num_objectives)
    scores = acquisition(candidates)
    assert scores.shape == (2,) and scores[0] > scores[1]
    # An infeasible candidate (constraint probability ~0) loses its advantage.
    constrained = acquisition(candidates, torch.tensor([[[1e-9], [1.0]]] * 2, dtype=torch.float64))
    assert constrained[0] < scores[0]
    with pytest.raises(ValueError, match=r"expected 1|expected 2"):
        acquisition(torch.zeros(2, 2, num_objectives + 1, dtype=torch.float64))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"expected \(E, B, M\)"):
        log_expected_improvement(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match=r"best_f has shape \(2,\); expected \(\) or \(3,\)"):
        log_expected_improvement(torch.zeros(3, 4, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="M >= 2"):
        log_expected_hypervolume_improvement(torch.zeros(1, 2, 1), torch.zeros(1, 3, 1))
