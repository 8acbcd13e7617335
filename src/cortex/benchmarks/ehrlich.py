"""Ehrlich functions: closed-form test functions for biological sequence design.

Stanton et al. 2024, "Closed-Form Test Functions for Biophysical Sequence Design Algorithms" (arXiv 2407.00236).
Definition as in the MIT-licensed reference implementation pytorch-holo 0.0.5 (`holo.test_functions.closed_form.
Ehrlich`); for the same construction seed this module draws the same instance (transition matrix, motifs,
spacings) and the same initial solutions, because it makes the same random draws in the same order on a
`torch.Generator` seeded with `random_seed`. Golden values: tests/benchmarks/golden/ (scripts/ehrlich_golden.py).

An instance over v states and sequences of length L:
- feasibility: a sparse ergodic transition matrix P (v, v) of a discrete Markov process (DMP); a sequence is
  feasible iff every consecutive transition has P > 0. Infeasible sequences score -inf.
- c motifs of k states each with spacings (k-1 positive gaps); for each motif the best placement over all
  offsets gives the number of motif elements present, quantized to q levels: floor(count / ceil(k/q)) /
  (k / ceil(k/q)), passed through the cubic epistasis response (identity when epistasis_factor = 0).
- f(x) = prod over motifs of the responses, in [0, 1]; the optimum is 1.0.

Shape legend: B batch, L length, v states, c motifs, k motif length.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from cortex.benchmarks.blackbox import BlackBox, Candidates, check_string_batch, check_token_batch

# Softmax temperature and relative band width of the sparse transition matrix (the reference's constants).
TRANSITION_SOFTMAX_TEMPERATURE = 0.5
TRANSITION_BAND_FRACTION = 0.4

# Issue 7 targets, named `ehr_v-{states}_l-{length}_m-{motif length}_c-{motifs}_q-{quantization}`.
EHRLICH_INSTANCES: dict[str, str] = {
    "easy": "ehr_v-32_l-32_m-4_c-4_q-4",
    "medium": "ehr_v-32_l-128_m-4_c-4_q-4",
    "hard": "ehr_v-32_l-128_m-8_c-8_q-8",
}
_NAME_PATTERN = re.compile(r"ehr_v-(\d+)_l-(\d+)_m-(\d+)_c-(\d+)_q-(\d+)")


def sparse_ergodic_transition_matrix(
    num_states: int, generator: torch.Generator, softmax_temperature: float = TRANSITION_SOFTMAX_TEMPERATURE
) -> torch.Tensor:
    """(v, v) float32 row-stochastic matrix whose rows allow a wrapped band of 2*int(0.4 v)+1 next states.

    Draws, in order: a (v, v) standard normal matrix (softmax over rows at `softmax_temperature` gives the
    dense probabilities), then a permutation of the band mask's rows. Self-transitions are always allowed.
    Raises ValueError if the chain is not ergodic (irreducible and aperiodic).
    """
    dense = (torch.randn(num_states, num_states, generator=generator) / softmax_temperature).softmax(dim=-1)
    bandwidth = int(num_states * TRANSITION_BAND_FRACTION)
    states = torch.arange(num_states)
    circular_distance = (states.unsqueeze(0) - states.unsqueeze(1)) % num_states  # (v, v): (j - i) mod v
    band = (circular_distance <= bandwidth) | (circular_distance >= num_states - bandwidth)
    allowed = band[torch.randperm(num_states, generator=generator)] | torch.eye(num_states, dtype=torch.bool)
    transition = torch.where(allowed, dense, torch.zeros_like(dense))
    transition = transition / transition.sum(dim=-1, keepdim=True)
    if not is_primitive(transition > 0):
        raise ValueError(
            f"the sampled {num_states}-state transition matrix is not ergodic; choose another random_seed"
        )
    return transition


def is_primitive(adjacency: torch.Tensor) -> bool:
    """True iff the (v, v) bool adjacency matrix is primitive: some power has all entries positive.

    Wielandt's bound: a primitive matrix has A^m > 0 for m = (v - 1)^2 + 1. Computed by repeated squaring of a
    0/1 matrix, so the cost is O(v^3 log m).
    """
    num_states = adjacency.shape[0]
    exponent = (num_states - 1) ** 2 + 1
    power = torch.eye(num_states)
    base = adjacency.float()
    while exponent > 0:
        if exponent & 1:
            power = (power @ base).clamp(max=1.0)
        base = (base @ base).clamp(max=1.0)
        exponent >>= 1
    return bool((power > 0).all())


def stationary_distribution(transition: torch.Tensor, tolerance: float = 1e-5) -> torch.Tensor:
    """(v,) stationary distribution pi of a row-stochastic (v, v) matrix: pi P = pi, sum(pi) = 1.

    Solved as the least-squares system [(I - P)^T; 1^T] pi = [0; 1] through a reduced QR factorisation
    (the reference's numerics, so the float32 result, and the DMP draws that use it, match bit for bit).
    """
    num_states = transition.shape[0]
    system = torch.cat([(torch.eye(num_states) - transition).T, torch.ones(1, num_states)], dim=0)  # (v+1, v)
    target = torch.zeros(num_states + 1, 1)
    target[-1] = 1.0
    q, r = torch.linalg.qr(system)
    solution = torch.linalg.solve(r, q.T @ target)  # (v, 1)
    residual = torch.linalg.norm(system @ solution - target) / torch.linalg.norm(target)
    if residual > tolerance:
        raise ValueError(
            f"no stationary distribution: relative residual {float(residual):.3g} > tolerance {tolerance}"
        )
    return solution.squeeze(-1)


def sample_dmp(
    initial_dist: torch.Tensor,
    transition: torch.Tensor,
    num_samples: int,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(num_samples, num_steps) int64 trajectories of a discrete Markov process.

    Draws the first states with one multinomial over `initial_dist` (v,), then one multinomial per step over
    the rows of `transition` (v, v) selected by the previous states (the reference's draw order).
    """
    samples = torch.zeros(num_samples, num_steps, dtype=torch.int64)
    samples[:, 0] = torch.multinomial(initial_dist, num_samples, replacement=True, generator=generator)
    for step in range(1, num_steps):
        samples[:, step] = torch.multinomial(
            transition[samples[:, step - 1]], 1, generator=generator
        ).squeeze(-1)
    return samples


class Ehrlich(BlackBox):
    """An Ehrlich function instance; call it on a batch to get (B,) float32 values in {-inf} U [0, 1].

    Args:
        num_states: vocabulary size v (>= 2).
        dim: sequence length L (>= num_motifs * motif_length).
        num_motifs: number of motifs c (>= 1).
        motif_length: motif length k (>= 2).
        quantization: q levels of motif presence, 1 <= q <= k (None means q = k).
        epistasis_factor: strength of the cubic response a*x*(x-1)+1 applied to each motif's presence x.
        random_seed: the construction seed; it fixes the instance (keep it fixed, vary the optimizer's seed).
        alphabet: optional string of v distinct characters; if given, candidates may also be strings.
        batch_size, num_workers, budget, start_method: see `BlackBox`.

    Candidates are a (B, L) integer tensor of states in [0, v), or (with an alphabet) a list of B strings.
    Attributes: `transition_matrix` (v, v), `initial_dist` (v,) uniform (used for feasibility),
    `stationary_dist` (v,) (used to sample), `motifs` (c, k) int64, `spacings` (c, k-1) int64 gaps.
    """

    optimal_value: float = 1.0

    def __init__(
        self,
        num_states: int,
        dim: int,
        num_motifs: int,
        motif_length: int,
        quantization: int | None = None,
        epistasis_factor: float = 0.0,
        random_seed: int = 0,
        alphabet: str | None = None,
        batch_size: int = 4096,
        num_workers: int = 0,
        budget: int | None = None,
        start_method: str = "spawn",
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, budget=budget, start_method=start_method
        )
        quantization = motif_length if quantization is None else quantization
        for name, value, minimum in [
            ("num_states", num_states, 2),
            ("dim", dim, 1),
            ("num_motifs", num_motifs, 1),
            ("motif_length", motif_length, 2),
            ("quantization", quantization, 1),
        ]:
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"Ehrlich {name} must be an int >= {minimum}; got {value!r}")
        if quantization > motif_length:
            raise ValueError(
                f"Ehrlich quantization must be <= motif_length={motif_length}; got {quantization}"
            )
        if dim < num_motifs * motif_length:
            raise ValueError(
                f"Ehrlich dim={dim} cannot hold {num_motifs} motifs of length {motif_length}; "
                f"expected dim >= {num_motifs * motif_length}"
            )
        if alphabet is not None and (len(alphabet) != num_states or len(set(alphabet)) != num_states):
            raise ValueError(
                f"Ehrlich alphabet must have {num_states} distinct characters (one per state); got {alphabet!r}"
            )
        self.num_states = num_states
        self.dim = dim
        self.num_motifs = num_motifs
        self.motif_length = motif_length
        self.quantization = quantization
        self.epistasis_factor = float(epistasis_factor)
        self.random_seed = random_seed
        self.alphabet = alphabet

        generator = torch.Generator().manual_seed(random_seed)
        self.transition_matrix = sparse_ergodic_transition_matrix(num_states, generator)
        self.initial_dist = torch.full((num_states,), 1.0 / num_states)
        self.stationary_dist = stationary_distribution(self.transition_matrix)
        # One DMP trajectory cut into c motifs, so a feasible sequence holding every motif exists.
        all_motifs = sample_dmp(
            self.stationary_dist, self.transition_matrix, 1, num_motifs * motif_length, generator
        )
        self.motifs = all_motifs.view(num_motifs, motif_length)
        slack_per_motif = (dim - num_motifs * motif_length) // num_motifs
        spacings = []
        for _ in range(num_motifs):
            # A random point of the (k-1)-simplex splits the per-motif slack into gaps of at least 1.
            weights = torch.rand(motif_length - 1, generator=generator)
            weights = weights / weights.sum()
            spacings.append(1 + (slack_per_motif * weights).floor().to(torch.int64))
        self.spacings = torch.stack(spacings)  # (c, k-1)

        # Offsets of each motif element from the motif's start: (c, k); placements start at s in [0, L).
        offsets = torch.cat([torch.zeros(num_motifs, 1, dtype=torch.int64), self.spacings.cumsum(-1)], dim=-1)
        starts = torch.arange(dim)
        positions = starts.view(1, dim, 1) + offsets.unsqueeze(1)  # (c, L, k)
        self._placement_valid = positions[..., -1] < dim  # (c, L): the whole motif fits
        self._placement_index = positions.clamp(max=dim - 1)
        # Quantization as in the reference: count // ceil(k/q) / (k / ceil(k/q)).
        self._count_step = math.ceil(motif_length / quantization)
        self._level_scale = motif_length / self._count_step
        self._char_to_state = None if alphabet is None else {char: i for i, char in enumerate(alphabet)}

    @classmethod
    def from_name(cls, name: str, random_seed: int = 0, **kwargs: Any) -> Ehrlich:
        """Builds `ehr_v-{v}_l-{L}_m-{k}_c-{c}_q-{q}` or one of the presets "easy", "medium", "hard"."""
        full_name = EHRLICH_INSTANCES.get(name, name)
        match = _NAME_PATTERN.fullmatch(full_name)
        if match is None:
            raise ValueError(
                f"unknown Ehrlich instance {name!r}; expected one of {sorted(EHRLICH_INSTANCES)} or a name "
                f"like 'ehr_v-32_l-32_m-4_c-4_q-4'"
            )
        v, length, k, c, q = (int(group) for group in match.groups())
        return cls(v, length, c, k, q, random_seed=random_seed, **kwargs)

    @property
    def name(self) -> str:
        return f"ehr_v-{self.num_states}_l-{self.dim}_m-{self.motif_length}_c-{self.num_motifs}_q-{self.quantization}"

    def __repr__(self) -> str:
        return (
            f"Ehrlich({self.name}, random_seed={self.random_seed}, epistasis_factor={self.epistasis_factor})"
        )

    # ---- black-box interface -------------------------------------------------------------------------------

    def prepare(self, candidates: Candidates) -> torch.Tensor:
        """Checks a batch and returns it as a (B, L) int64 tensor of states."""
        if isinstance(candidates, torch.Tensor):
            candidates = check_token_batch(candidates, self.dim, where="Ehrlich")
            out_of_range = (candidates < 0) | (candidates >= self.num_states)
            if out_of_range.any():
                row, position = (int(i) for i in out_of_range.nonzero()[0])
                raise ValueError(
                    f"Ehrlich candidates[{row}, {position}] = {int(candidates[row, position])} is out of the "
                    f"vocabulary; expected a state in [0, {self.num_states})"
                )
            return candidates.long()
        if self._char_to_state is None:
            raise TypeError(
                f"Ehrlich got {type(candidates).__name__}; expected a (B, {self.dim}) integer tensor "
                f"(strings need an alphabet: Ehrlich(..., alphabet=...))"
            )
        sequences = check_string_batch(candidates, where="Ehrlich candidates")
        return self.encode(sequences)

    def evaluate(self, prepared: torch.Tensor) -> torch.Tensor:
        return self.objective(prepared)

    # ---- the function --------------------------------------------------------------------------------------

    def encode(self, sequences: list[str]) -> torch.Tensor:
        """(B, L) int64 states of B strings over `alphabet`; ValueError names a bad length or character."""
        if self._char_to_state is None:
            raise ValueError("Ehrlich.encode needs an alphabet; construct with alphabet=...")
        rows = []
        for index, sequence in enumerate(sequences):
            if len(sequence) != self.dim:
                raise ValueError(
                    f"Ehrlich candidates[{index}] has length {len(sequence)}; expected {self.dim}"
                )
            try:
                rows.append([self._char_to_state[char] for char in sequence])
            except KeyError as error:
                raise ValueError(
                    f"Ehrlich candidates[{index}] has {error.args[0]!r} at position "
                    f"{sequence.index(error.args[0])}; expected characters of {self.alphabet!r}"
                ) from None
        return torch.tensor(rows, dtype=torch.int64).view(len(rows), self.dim)

    def decode(self, states: torch.Tensor) -> list[str]:
        """B strings over `alphabet` from (B, L) states."""
        if self.alphabet is None:
            raise ValueError("Ehrlich.decode needs an alphabet; construct with alphabet=...")
        return ["".join(self.alphabet[s] for s in row) for row in states.tolist()]

    def is_feasible(self, states: torch.Tensor) -> torch.Tensor:
        """(B,) bool: every consecutive transition of (B, L) states has nonzero probability."""
        steps = self.transition_matrix[states[:, :-1], states[:, 1:]]  # (B, L-1)
        return (steps > 0).all(dim=-1)

    def motif_presence(self, states: torch.Tensor) -> torch.Tensor:
        """(B, c) float32 quantized fraction of each motif present at its spacing, best over placements.

        Memory is O(B * c * L * k); evaluate large batches in chunks (`batch_size`).
        """
        gathered = states[:, self._placement_index]  # (B, c, L, k)
        count = (gathered == self.motifs.view(1, self.num_motifs, 1, self.motif_length)).sum(-1).float()
        level = torch.div(count, self._count_step, rounding_mode="floor") / self._level_scale  # (B, c, L)
        level = torch.where(self._placement_valid, level, torch.zeros_like(level))
        return level.amax(dim=-1)

    def objective(self, states: torch.Tensor) -> torch.Tensor:
        """(B,) float32: product over motifs of the epistatic response, -inf where infeasible."""
        presence = self.motif_presence(states)
        response = (self.epistasis_factor * presence * (presence - 1.0) + 1.0) * presence
        value = response.prod(dim=-1)
        return torch.where(self.is_feasible(states), value, torch.full_like(value, -math.inf))

    def initial_solution(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(num_samples, L) feasible DMP samples started from the stationary distribution.

        Without a generator this is deterministic, drawn from a generator seeded with `random_seed` (the
        reference's behaviour: the same pool for every optimizer seed).
        """
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(self.random_seed)
        return sample_dmp(self.stationary_dist, self.transition_matrix, num_samples, self.dim, generator)

    def random_solution(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(num_samples, L) uniform random states (almost never feasible for long sequences)."""
        return torch.randint(self.num_states, (num_samples, self.dim), generator=generator)

    def optimal_solution(self) -> torch.Tensor:
        """(L,) a feasible sequence scoring 1.0: each motif spelled at its spacing, gaps filled by repeats."""
        pieces = []
        for motif, spacing in zip(self.motifs, self.spacings, strict=True):
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), spacing.cumsum(0)])
            # Position p of the motif's span holds the last motif element placed at or before p.
            element = torch.searchsorted(offsets, torch.arange(int(offsets[-1]) + 1), right=True) - 1
            pieces.append(motif[element])
        solution = torch.cat(pieces)
        return torch.cat([solution, solution[-1].repeat(self.dim - solution.numel())])
