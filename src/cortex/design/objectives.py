"""Design objectives over ensemble predictions: log expected improvement (single objective) and log expected
hypervolume improvement (several objectives), with constraint probabilities and fitted objective scaling.

The original cortex `GraphNEI` (spec 7.3) evaluates, for each ensemble member e separately, BoTorch's
per-sample log-improvement with q = 1 and then AVERAGES over members (a mean of logs, not the log of a mean):

* one objective: log_fatplus(y_e - best_f_e, tau=1e-6), best_f_e = max over the baseline of member e's
  predictions (noisy EI: the incumbent is a prediction, not an observation);
* several objectives: qLogEHVI's log hypervolume improvement of y_e over the box decomposition of member e's
  non-dominated baseline, with the reference point inferred from the pooled non-dominated baseline.

Ament et al., "Unexpected improvements to expected improvement for Bayesian optimization", NeurIPS 2023.
Inputs are ensemble predictions (E, B, M); outputs are (B,) scores (higher is better), differentiable.
BoTorch is needed only for the multi-objective box decomposition (`pip install pytorch-cortex[design]`).
"""

from __future__ import annotations

import torch

TAU_RELU = 1e-6  # botorch TAU_RELU: temperature of the smoothed ReLU in the improvement
TAU_MAX = 1e-2  # botorch TAU_MAX: temperature of the smoothed min against cell bounds
FAT_ALPHA = 0.1  # botorch fatplus: weight of the Cauchy tail (keeps fatplus monotone and convex)


def log_fatplus(x: torch.Tensor, tau: float = TAU_RELU) -> torch.Tensor:
    """log of the fat-tailed softplus tau * [softplus(x / tau) + 0.1 / (1 + (x / tau)^2)] (botorch safe_math).

    A smooth, strictly positive surrogate of max(x, 0) whose log has non-vanishing gradients for x << 0.
    """
    z = x / tau
    return (tau * (torch.nn.functional.softplus(z) + FAT_ALPHA / (1 + z.square()))).log()


def _check_values(where: str, values: torch.Tensor, num_objectives: int | None = None) -> None:
    if values.dim() != 3:
        raise ValueError(
            f"{where}: values have shape {tuple(values.shape)}; expected (E, B, M) ensemble predictions"
        )
    if num_objectives is not None and values.shape[-1] != num_objectives:
        raise ValueError(
            f"{where}: values have {values.shape[-1]} objectives (shape {tuple(values.shape)}); expected {num_objectives}"
        )


def log_expected_improvement(values: torch.Tensor, best_f: torch.Tensor) -> torch.Tensor:
    """Member-averaged log improvement (spec 7.3, M = 1).

    values: (E, B, 1) predictions; best_f: (E,) incumbent per member (or a 0-d tensor for all).
    Returns (B,) = mean_e log_fatplus(values[e, :, 0] - best_f[e], tau=1e-6).
    """
    _check_values("log_expected_improvement", values, num_objectives=1)
    best_f = torch.as_tensor(best_f, dtype=values.dtype, device=values.device)
    if best_f.dim() > 1 or (best_f.dim() == 1 and best_f.shape[0] != values.shape[0]):
        raise ValueError(
            f"log_expected_improvement: best_f has shape {tuple(best_f.shape)}; expected () or ({values.shape[0]},)"
        )
    improvement = values[..., 0] - best_f.reshape(-1, 1)  # (E, B)
    return log_fatplus(improvement).mean(dim=0)


def noisy_log_expected_improvement(values: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """`log_expected_improvement` with best_f_e = max over the baseline predictions of member e.

    values: (E, B, 1); baseline: (E, N, 1) predictions for the incumbent designs. Returns (B,).
    """
    _check_values("noisy_log_expected_improvement baseline", baseline, num_objectives=1)
    if baseline.shape[0] != values.shape[0]:
        raise ValueError(
            f"noisy_log_expected_improvement: baseline has {baseline.shape[0]} members, values {values.shape[0]}"
        )
    return log_expected_improvement(values, baseline[..., 0].amax(dim=1))


def _botorch():
    try:
        from botorch.utils.multi_objective.box_decompositions.non_dominated import (
            FastNondominatedPartitioning,
        )
        from botorch.utils.multi_objective.hypervolume import infer_reference_point
        from botorch.utils.multi_objective.pareto import is_non_dominated
        from botorch.utils.safe_math import fatmin
    except ImportError as error:  # optional dependency
        raise ImportError(
            "multi-objective design objectives need botorch; install it with `pip install pytorch-cortex[design]`"
        ) from error
    return FastNondominatedPartitioning, infer_reference_point, is_non_dominated, fatmin


def infer_ref_point(baseline: torch.Tensor) -> torch.Tensor:
    """(M,) reference point from (E, N, M) baseline predictions: botorch `infer_reference_point` on the
    non-dominated set of all E * N points (the original's `get_graph_nei_runtime_kwargs`)."""
    _check_values("infer_ref_point", baseline)
    _, infer_reference_point, is_non_dominated, _ = _botorch()
    pooled = baseline.detach().reshape(-1, baseline.shape[-1])
    return infer_reference_point(pooled[is_non_dominated(pooled)])


def log_expected_hypervolume_improvement(
    values: torch.Tensor, baseline: torch.Tensor, ref_point: torch.Tensor | None = None
) -> torch.Tensor:
    """Member-averaged log hypervolume improvement of each candidate (spec 7.3, M > 1; qLogEHVI with q = 1).

    For member e, with cells [l_c, u_c] of the box decomposition of the region dominated by neither e's
    non-dominated baseline nor bounded by the reference point:
        log HVI_e(y) = logsumexp_c sum_m fatmin(log_fatplus(y_m - l_cm, 1e-6), log(u_cm - l_cm); tau=1e-2)
    which is what BoTorch's `qLogExpectedHypervolumeImprovement` computes for one point and one sample.

    values: (E, B, M); baseline: (E, N, M); ref_point: (M,) or None (inferred from the baseline).
    Returns (B,) = mean over members.
    """
    _check_values("log_expected_hypervolume_improvement", values)
    _check_values("log_expected_hypervolume_improvement baseline", baseline, num_objectives=values.shape[-1])
    if baseline.shape[0] != values.shape[0] or values.shape[-1] < 2:
        raise ValueError(
            f"log_expected_hypervolume_improvement: values {tuple(values.shape)} and baseline "
            f"{tuple(baseline.shape)} need the same ensemble size E and M >= 2 objectives"
        )
    partitioning_cls, _, is_non_dominated, fatmin = _botorch()
    ref_point = infer_ref_point(baseline) if ref_point is None else torch.as_tensor(ref_point)
    ref_point = ref_point.to(values)
    if ref_point.shape != values.shape[-1:]:
        raise ValueError(
            f"log_expected_hypervolume_improvement: ref_point has shape {tuple(ref_point.shape)}; "
            f"expected ({values.shape[-1]},)"
        )
    upper_clamp = 1e10 if values.dtype == torch.float64 else 1e8  # botorch: keeps log(u - l) finite
    per_member = []
    for member in range(values.shape[0]):
        points = baseline[member].detach().to(values)
        partitioning = partitioning_cls(ref_point=ref_point, Y=points[is_non_dominated(points)])
        lower, upper = partitioning.get_hypercell_bounds()  # (C, M) each
        log_improvement = log_fatplus(values[member][:, None, :] - lower)  # (B, C, M)
        log_length = (upper.clamp_max(upper_clamp) - lower).log().expand_as(log_improvement)  # (B, C, M)
        log_sides = fatmin(torch.stack([log_improvement, log_length], dim=-1), dim=-1, tau=TAU_MAX)
        per_member.append(torch.logsumexp(log_sides.sum(dim=-1), dim=-1))  # (B,)
    return torch.stack(per_member).mean(dim=0)


def joint_objective_values(
    objectives: torch.Tensor, constraint_probs: torch.Tensor | None = None
) -> torch.Tensor:
    """Objective values with constraint probabilities multiplied in (spec 7.3 `get_joint_objective_values`).

    objectives: (E, B, M); constraint_probs: (E, B, M) per-objective probability that its constraints hold
    (product over that objective's constraints), or (E, B, 1) for all objectives. Returns (E, B, M).
    """
    _check_values("joint_objective_values", objectives)
    if constraint_probs is None:
        return objectives
    if (
        constraint_probs.dim() != 3
        or constraint_probs.shape[:2] != objectives.shape[:2]
        or constraint_probs.shape[-1] not in (1, objectives.shape[-1])
    ):
        raise ValueError(
            f"joint_objective_values: constraint_probs has shape {tuple(constraint_probs.shape)}; expected "
            f"({objectives.shape[0]}, {objectives.shape[1]}, 1 or {objectives.shape[-1]})"
        )
    return objectives * constraint_probs


class ObjectiveScaling:
    """Affine scaling (v + shift) * scale per objective (the original's `scale_value`), fitted from data so
    that the fitted values span [0, 1] per objective.

    shift, scale: (M,) tensors.
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor):
        shift, scale = torch.as_tensor(shift), torch.as_tensor(scale)
        if shift.dim() != 1 or shift.shape != scale.shape:
            raise ValueError(
                f"ObjectiveScaling shift {tuple(shift.shape)} and scale {tuple(scale.shape)} must both be (M,)"
            )
        if not bool((scale > 0).all()):
            raise ValueError(f"ObjectiveScaling scale must be positive, got {scale.tolist()}")
        self.shift, self.scale = shift, scale

    @classmethod
    def fit(cls, values: torch.Tensor, eps: float = 1e-8) -> ObjectiveScaling:
        """values: (..., M) predictions (e.g. (E, N, M) baseline). Maps each objective's [min, max] to [0, 1]."""
        if values.dim() < 1 or values.numel() == 0:
            raise ValueError(
                f"ObjectiveScaling.fit needs a non-empty (..., M) tensor, got {tuple(values.shape)}"
            )
        flat = values.detach().reshape(-1, values.shape[-1])
        low, high = flat.amin(dim=0), flat.amax(dim=0)
        return cls(shift=-low, scale=1.0 / (high - low).clamp_min(eps))

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        if values.shape[-1] != self.shift.shape[0]:
            raise ValueError(
                f"ObjectiveScaling: values have {values.shape[-1]} objectives; the scaling was fitted on "
                f"{self.shift.shape[0]}"
            )
        return (values + self.shift.to(values)) * self.scale.to(values)


class EnsembleAcquisition:
    """The LaMBO-2 acquisition over ensemble predictions (the original's GraphNEI, spec 7.3).

    Built once from baseline predictions (E, N, M) of the incumbent designs: one objective -> noisy log EI
    (best_f per member), several -> log EHVI with the inferred reference point. Optional scaling is fitted on
    the baseline. Calling it on candidate predictions (E, B, M) and optional constraint probabilities returns
    (B,) scores.
    """

    def __init__(
        self,
        baseline: torch.Tensor,
        baseline_constraint_probs: torch.Tensor | None = None,
        fit_scaling: bool = False,
    ):
        _check_values("EnsembleAcquisition baseline", baseline)
        baseline = baseline.detach()
        self.scaling = ObjectiveScaling.fit(baseline) if fit_scaling else None
        if self.scaling is not None:
            baseline = self.scaling(baseline)
        self.baseline = joint_objective_values(baseline, baseline_constraint_probs)
        self.num_objectives = baseline.shape[-1]
        self.ref_point = infer_ref_point(self.baseline) if self.num_objectives > 1 else None
        # Decided once: the acquisition depends only on the number of objectives.
        self._score = (
            noisy_log_expected_improvement
            if self.num_objectives == 1
            else lambda v, b: log_expected_hypervolume_improvement(v, b, self.ref_point)
        )

    def __call__(self, values: torch.Tensor, constraint_probs: torch.Tensor | None = None) -> torch.Tensor:
        _check_values("EnsembleAcquisition", values, num_objectives=self.num_objectives)
        if values.shape[0] != self.baseline.shape[0]:
            raise ValueError(
                f"EnsembleAcquisition: values have {values.shape[0]} members; the baseline has {self.baseline.shape[0]}"
            )
        if self.scaling is not None:
            values = self.scaling(values)
        return self._score(joint_objective_values(values, constraint_probs), self.baseline)
