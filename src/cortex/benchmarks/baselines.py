"""Model-free design baselines over token tensors: a genetic algorithm and random mutation.

Both optimizers maximize a black box, are seeded (every draw comes from one `torch.Generator`), and share
the design constraints of cortex.design: each candidate descends from one of the `seeds` (its anchor),
positions where `is_mutable` is False always keep the anchor's token, and a candidate never differs from its
anchor at more than `max_edits` positions. Ask/tell API: `candidates = opt.ask()`, `opt.tell(values)`; or
`opt.step(black_box)` / `opt.run(black_box, num_steps)`. NaN values (unknown) rank like -inf (infeasible).

Shape legend: N seeds, P particles (population), L length.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import torch


class DiscreteOptimizer:
    """Shared state of the baselines: population, anchors, constraints, best-so-far.

    Args:
        seeds: (N, L) int64 starting sequences (token ids / states).
        vocab: the token ids a mutation may write.
        num_particles: P, the number of candidates asked per step.
        is_mutable: (L,) or (N, L) bool, True where edits are allowed (None: everywhere).
        max_edits: the most positions a candidate may differ from its anchor seed (None: unlimited).
        seed: the optimizer's random seed.
    """

    def __init__(
        self,
        seeds: torch.Tensor,
        vocab: Sequence[int] | torch.Tensor,
        num_particles: int,
        is_mutable: torch.Tensor | None = None,
        max_edits: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(seeds, torch.Tensor) or seeds.dim() != 2 or seeds.dtype != torch.int64:
            described = (
                f"{seeds.dtype} tensor of shape {tuple(seeds.shape)}"
                if isinstance(seeds, torch.Tensor)
                else type(seeds).__name__
            )
            raise ValueError(f"seeds must be a (N, L) int64 tensor; got {described}")
        self.vocab = torch.as_tensor(vocab, dtype=torch.int64).reshape(-1)
        if self.vocab.numel() < 2:
            raise ValueError(f"vocab must hold at least 2 token ids; got {self.vocab.tolist()}")
        if not isinstance(num_particles, int) or num_particles < 2:
            raise ValueError(f"num_particles must be an int >= 2; got {num_particles!r}")
        if max_edits is not None and (not isinstance(max_edits, int) or max_edits < 1):
            raise ValueError(f"max_edits must be None or an int >= 1; got {max_edits!r}")
        num_seeds, length = seeds.shape
        if is_mutable is None:
            is_mutable = torch.ones(length, dtype=torch.bool)
        if is_mutable.dtype != torch.bool or is_mutable.shape not in {(length,), (num_seeds, length)}:
            raise ValueError(
                f"is_mutable must be a bool tensor of shape ({length},) or ({num_seeds}, {length}); got "
                f"{is_mutable.dtype} {tuple(is_mutable.shape)}"
            )
        self.seeds = seeds.clone()
        self.is_mutable = is_mutable.expand(num_seeds, length).clone()
        self.num_particles = num_particles
        self.max_edits = max_edits
        self.generator = torch.Generator().manual_seed(seed)
        self.best_candidate: torch.Tensor | None = None
        self.best_value = -math.inf
        self.num_evaluations = 0
        self.history: list[float] = []  # best-so-far value after each `tell`
        # Particle p descends from seeds[anchor[p]]; the first min(N, P) particles are the seeds themselves.
        self.anchor = torch.arange(num_particles) % num_seeds
        copies = self.seeds[self.anchor]
        fresh = (torch.arange(num_particles) >= num_seeds).unsqueeze(-1)  # (P, 1): copies beyond the seeds
        self.particles = self._constrain(torch.where(fresh, self._perturb(copies), copies))
        self._asked: torch.Tensor | None = None

    def ask(self) -> torch.Tensor:
        """(P, L) int64 candidates to evaluate next."""
        self._asked = self.particles.clone()
        return self._asked.clone()

    def tell(self, values: torch.Tensor) -> None:
        """Records (P,) values of the last asked candidates (higher is better) and moves the population."""
        if self._asked is None:
            raise RuntimeError(f"{type(self).__name__}.tell called before ask()")
        if not isinstance(values, torch.Tensor) or values.shape != (self.num_particles,):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(
                f"tell expects ({self.num_particles},) values for the asked candidates; got {shape}"
            )
        values = torch.nan_to_num(values.float(), nan=-math.inf)
        best = int(values.argmax())
        if float(values[best]) > self.best_value or self.best_candidate is None:
            self.best_value = float(values[best])
            self.best_candidate = self._asked[best].clone()
        self.num_evaluations += self.num_particles
        self.history.append(self.best_value)
        self.particles, self.anchor = self._next_population(self._asked, self.anchor, values)
        self._asked = None

    def step(self, black_box: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """One ask / evaluate / tell; returns the best value so far."""
        self.tell(black_box(self.ask()))
        return self.best_value

    def run(self, black_box: Callable[[torch.Tensor], torch.Tensor], num_steps: int) -> list[float]:
        """`num_steps` steps; returns the best-so-far value after each."""
        for _ in range(num_steps):
            self.step(black_box)
        return self.history[-num_steps:]

    def _next_population(
        self, particles: torch.Tensor, anchor: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define how the population moves")

    def _perturb(self, particles: torch.Tensor) -> torch.Tensor:
        """The optimizer's mutation operator on (P, L) particles anchored at `self.anchor`."""
        raise NotImplementedError(f"{type(self).__name__} must define its mutation operator")

    def _substitute(self, particles: torch.Tensor, mutation_mask: torch.Tensor) -> torch.Tensor:
        """Writes uniform vocabulary tokens where the (P, L) mask is True."""
        draws = self.vocab[torch.randint(self.vocab.numel(), particles.shape, generator=self.generator)]
        return torch.where(mutation_mask, draws, particles)

    def _constrain(self, particles: torch.Tensor) -> torch.Tensor:
        """Restores immutable positions and reverts random edits beyond `max_edits` to the anchor's tokens."""
        anchors = self.seeds[self.anchor]
        particles = torch.where(self.is_mutable[self.anchor], particles, anchors)
        if self.max_edits is None:
            return particles
        edited = particles != anchors  # (P, L)
        # Keep a uniformly random subset of max_edits edits per row: rank edits by random keys.
        keys = torch.rand(particles.shape, generator=self.generator).masked_fill(~edited, math.inf)
        rank = keys.argsort(dim=-1).argsort(dim=-1)
        keep = edited & (rank < self.max_edits)
        return torch.where(keep, particles, anchors)


class GeneticAlgorithm(DiscreteOptimizer):
    """Genetic algorithm in the style of holo-bench's DiscreteEvolution (survival, uniform crossover, mutation).

    Each generation keeps the best `ceil(survival_quantile * P)` (at least 2) particles, refills the rest with
    uniform crossover of two random survivors (a site comes from the first parent with `recombine_prob`), and
    then mutates every site with `mutation_prob` to a uniform vocabulary token. A child keeps its first
    parent's anchor. Survivors are mutated too, as in DiscreteEvolution; the best-so-far is kept separately.

    Args: see `DiscreteOptimizer`, plus
        mutation_prob: per-site mutation probability in (0, 1) (None: 1 / L).
        recombine_prob: per-site crossover probability in [0, 1).
        survival_quantile: fraction of the population kept each generation, in (0, 1). The default 0.1 is
            strong selection, as in holo-bench's runs (1e-4 of 1e6 particles): at 0.5, survivors that mutate
            into infeasible sequences take over and a 128-particle run on Ehrlich "easy" never improves.
    """

    def __init__(
        self,
        seeds: torch.Tensor,
        vocab: Sequence[int] | torch.Tensor,
        num_particles: int = 128,
        mutation_prob: float | None = None,
        recombine_prob: float = 0.5,
        survival_quantile: float = 0.1,
        is_mutable: torch.Tensor | None = None,
        max_edits: int | None = None,
        seed: int = 0,
    ) -> None:
        mutation_prob = 1.0 / seeds.shape[-1] if mutation_prob is None else mutation_prob
        if not 0.0 < mutation_prob < 1.0:
            raise ValueError(f"mutation_prob must be in (0, 1); got {mutation_prob!r}")
        if not 0.0 <= recombine_prob < 1.0:
            raise ValueError(f"recombine_prob must be in [0, 1); got {recombine_prob!r}")
        if not 0.0 < survival_quantile < 1.0:
            raise ValueError(f"survival_quantile must be in (0, 1); got {survival_quantile!r}")
        self.mutation_prob = mutation_prob
        self.recombine_prob = recombine_prob
        self.survival_quantile = survival_quantile
        super().__init__(seeds, vocab, num_particles, is_mutable, max_edits, seed)

    def _perturb(self, particles: torch.Tensor) -> torch.Tensor:
        mask = torch.rand(particles.shape, generator=self.generator) < self.mutation_prob
        return self._substitute(particles, mask)

    def _next_population(
        self, particles: torch.Tensor, anchor: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_survivors = max(2, math.ceil(self.survival_quantile * self.num_particles))
        survivors = values.topk(num_survivors).indices  # (S,)
        num_children = self.num_particles - num_survivors
        parent_1 = survivors[torch.randint(num_survivors, (num_children,), generator=self.generator)]
        parent_2 = survivors[torch.randint(num_survivors, (num_children,), generator=self.generator)]
        from_first = (
            torch.rand(num_children, particles.shape[-1], generator=self.generator) < self.recombine_prob
        )
        children = torch.where(from_first, particles[parent_1], particles[parent_2])
        next_particles = torch.cat([particles[survivors], children])
        self.anchor = torch.cat([anchor[survivors], anchor[parent_1]])
        return self._constrain(self._perturb(next_particles)), self.anchor


class RandomMutation(DiscreteOptimizer):
    """Random local search within the edit budget: mutate the best sequences found so far at random.

    Each step, every one of the P candidates is a parent drawn uniformly from the current elite (the best
    P sequences evaluated so far, starting from the seeds) with `num_mutations` uniformly chosen mutable
    positions set to uniform vocabulary tokens, then held to the edit budget of its anchor seed.

    Args: see `DiscreteOptimizer`, plus
        num_mutations: positions changed per candidate per step (>= 1).
    """

    def __init__(
        self,
        seeds: torch.Tensor,
        vocab: Sequence[int] | torch.Tensor,
        num_particles: int = 128,
        num_mutations: int = 1,
        is_mutable: torch.Tensor | None = None,
        max_edits: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(num_mutations, int) or num_mutations < 1:
            raise ValueError(f"num_mutations must be an int >= 1; got {num_mutations!r}")
        self.num_mutations = num_mutations
        super().__init__(seeds, vocab, num_particles, is_mutable, max_edits, seed)
        self._elite = torch.empty(0, seeds.shape[-1], dtype=torch.int64)
        self._elite_anchor = torch.empty(0, dtype=torch.int64)
        self._elite_values = torch.empty(0)

    def _perturb(self, particles: torch.Tensor) -> torch.Tensor:
        # num_mutations uniformly chosen mutable positions per row: the lowest random keys among them.
        mask = self.is_mutable[self.anchor]
        keys = torch.rand(particles.shape, generator=self.generator).masked_fill(~mask, math.inf)
        rank = keys.argsort(dim=-1).argsort(dim=-1)
        return self._substitute(particles, mask & (rank < self.num_mutations))

    def _next_population(
        self, particles: torch.Tensor, anchor: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pool = torch.cat([self._elite, particles])
        pool_anchor = torch.cat([self._elite_anchor, anchor])
        pool_values = torch.cat([self._elite_values, values])
        elite = pool_values.topk(min(self.num_particles, pool_values.numel())).indices
        self._elite, self._elite_anchor, self._elite_values = (
            pool[elite],
            pool_anchor[elite],
            pool_values[elite],
        )
        parents = torch.randint(elite.numel(), (self.num_particles,), generator=self.generator)
        self.anchor = self._elite_anchor[parents]
        children = self._perturb(self._elite[parents])
        return self._constrain(children), self.anchor


def benchmark_genetic_algorithm(
    instance: str,
    seeds: Sequence[int],
    num_particles: int = 128,
    num_steps: int = 32,
    function_seed: int = 0,
    **ga_kwargs: float,
) -> dict[str, object]:
    """Best Ehrlich value reached by the GA per optimizer seed, started from the instance's DMP pool.

    Returns {"instance", "num_evaluations", "best" (per seed), "median"}. Every run evaluates
    num_particles * num_steps candidates, the initial pool included.
    """
    from cortex.benchmarks.ehrlich import Ehrlich

    best = []
    for seed in seeds:
        function = Ehrlich.from_name(instance, random_seed=function_seed, budget=num_particles * num_steps)
        optimizer = GeneticAlgorithm(
            function.initial_solution(num_particles),
            vocab=range(function.num_states),
            num_particles=num_particles,
            seed=seed,
            **ga_kwargs,
        )
        optimizer.run(function, num_steps)
        best.append(optimizer.best_value)
    return {
        "instance": Ehrlich.from_name(instance).name,
        "num_evaluations": num_particles * num_steps,
        "best": best,
        "median": statistics.median(best),
    }
