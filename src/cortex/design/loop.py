"""The closed design loop: train a surrogate on everything measured so far, propose a batch, measure it, repeat.

    problem = build_problem("easy", seed=0, initial_size=128)
    result = ClosedLoop(problem, LoopConfig(method="lambo", batch_size=128, budget=1152), "runs/easy_s0").run()

Round 0 measures the problem's starting set (it counts against the budget). Every later round:

  1. (model-based methods) train the cortex surrogate on all data so far, in memory, warm-started from the
     previous round's weights: a regressor leaf on the objective (NaN = infeasible or unknown, left out), a
     classifier leaf on feasibility (problems with a feasibility constraint) and an MLM leaf;
  2. propose `batch_size` sequences never measured before: LaMBO-2 from the best measured sequences under the
     problem's constraints ("lambo"; "lambo_unguided" uses max_guidance_updates = 0), or one generation of the
     genetic algorithm ("ga") or of random mutation ("random");
  3. measure them with the problem's black box (strings in, values out) and append them.

The loop stops when the evaluation budget is spent. Sequences a baseline asks for again are answered from the
data, without an evaluation (a lab would not re-assay them). Why the feasibility leaf: the original cortex,
run through this kind of loop, proposed 63-89 % infeasible Ehrlich sequences (issue 7); its probability of
feasibility multiplies into the acquisition (`AcquisitionObjective` constraint leaves).

State is one safetensors file written atomically after every round (temp file, fsync, rename): the data
(`states` (N, L) token indices into the problem's alphabet, `values` (N,), `rounds` (N,)), the loop's
generator state, the surrogate's weights (`model.*`) and the per-round history in the metadata. A killed run
restarted with the same arguments continues after the last saved round and ends with the same result as an
uninterrupted one: every random draw of a round comes from seeds drawn from the saved generator, and the
baselines' optimizers are rebuilt by replaying their rounds against the saved data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import scipy.stats
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from torchmetrics.functional import spearman_corrcoef
from torchmetrics.functional.classification import binary_auroc
from transformers import PreTrainedTokenizerFast

from cortex.benchmarks.baselines import DiscreteOptimizer, GeneticAlgorithm, RandomMutation
from cortex.benchmarks.blackbox import BlackBox
from cortex.corruption.processes import MaskCorruption
from cortex.design.constraints import DesignConstraints
from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.tree_objectives import AcquisitionObjective
from cortex.model.configuration_neural_tree import NeuralTreeConfig
from cortex.model.layers import POOLING_TYPES
from cortex.model.modeling_neural_tree import NeuralTreeModel

logger = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("lambo", "lambo_unguided", "ga", "random")
STATE_FILE = "loop_state.safetensors"
STATE_FORMAT = "cortex-closed-loop-1"
# Characters standing for Ehrlich states 0..v-1 (the surrogate reads strings).
STATE_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits
SPECIAL_TOKENS: tuple[str, ...] = ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>")
TARGET_TRANSFORMS: tuple[str, ...] = ("none", "rank", "log")
# Options absent from the config of a state saved before they existed, and the value such a run behaved as (the
# option's value when it was added; its default may have changed since, so the current default would be wrong).
PREDATED_OPTIONS: dict[str, object] = {
    "explore_feasible_frac": None,
    "baseline_start": "given",
    "mlm_seed_pool_only": False,
    "fill_batch": False,
    "explore_rate_quantile": None,
    "feasible_floor_scope": "round",
}
FLOOR_SCOPES = ("run", "round")
BASELINE_STARTS = ("best", "given")


# ---- problems --------------------------------------------------------------------------------------------------


@dataclass
class DesignProblem:
    """What the loop optimizes.

    name: label in results. black_box: strings over `alphabet` in -> (B,) values out (higher is better, -inf =
    infeasible, NaN = unknown). alphabet: one character per token index (states are indices into it).
    initial: the starting set (measured in round 0). is_mutable: (L,) bool, where edits are allowed.
    learn_feasibility: train a feasibility classifier leaf and use it as a constraint in the acquisition.
    target_value: a value worth reaching (Ehrlich optimum 1.0, GB1 top-1 % fitness); results report the number
    of evaluations to reach it. tokenizer: the surrogate's tokenizer (its single-character tokens must cover
    the alphabet). root_type: "conv1d" surrogate root.
    """

    name: str
    black_box: BlackBox
    alphabet: str
    initial: list[str]
    is_mutable: torch.Tensor
    learn_feasibility: bool
    target_value: float | None
    tokenizer: PreTrainedTokenizerFast

    def __post_init__(self) -> None:
        if len(set(self.alphabet)) != len(self.alphabet) or len(self.alphabet) < 2:
            raise ValueError(f"problem alphabet {self.alphabet!r} must hold >= 2 distinct characters")
        if not self.initial:
            raise ValueError(f"problem {self.name!r} has no initial sequences; expected a non-empty list")
        self.length = len(self.initial[0])
        self.initial_states = self.encode(self.initial, where=f"problem {self.name!r} initial")
        if self.is_mutable.dtype != torch.bool or tuple(self.is_mutable.shape) != (self.length,):
            raise ValueError(
                f"is_mutable must be a ({self.length},) bool tensor; got {self.is_mutable.dtype} "
                f"{tuple(self.is_mutable.shape)}"
            )

    def encode(self, sequences: Sequence[str], *, where: str = "sequences") -> torch.Tensor:
        """(B, L) int64 indices into the alphabet; ValueError names a bad length or character."""
        index = {char: i for i, char in enumerate(self.alphabet)}
        rows = []
        for row, sequence in enumerate(sequences):
            if not isinstance(sequence, str):
                raise TypeError(f"{where}[{row}] is {type(sequence).__name__}; expected a string")
            if len(sequence) != self.length:
                raise ValueError(f"{where}[{row}] has length {len(sequence)}; expected {self.length}")
            for position, char in enumerate(sequence):
                if char not in index:
                    raise ValueError(
                        f"{where}[{row}] has {char!r} at position {position}; expected one of {self.alphabet!r}"
                    )
            rows.append([index[char] for char in sequence])
        return torch.tensor(rows, dtype=torch.int64).view(len(rows), self.length)

    def decode(self, states: torch.Tensor) -> list[str]:
        return ["".join(self.alphabet[i] for i in row) for row in states.tolist()]


def state_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """Character-level tokenizer: ids 0-4 are <cls> <pad> <eos> <unk> <mask>, then one id per alphabet character
    (special tokens are neither corrupted nor sampled: `cortex.data.tokenization.token_masks`)."""
    if not 2 <= len(alphabet) == len(set(alphabet)):
        raise ValueError(f"alphabet {alphabet!r} must hold >= 2 distinct characters")
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[^<>\s]+>|\S"), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        cls_token="<cls>",
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        mask_token="<mask>",
        clean_up_tokenization_spaces=False,
    )


def ehrlich_problem(
    name: str = "easy", initial_size: int = 128, function_seed: int = 0, **black_box_kwargs
) -> DesignProblem:
    """An Ehrlich instance ("easy" | "medium" | "hard" | "ehr_v-..."): the starting set is the instance's
    deterministic DMP pool `initial_solution(initial_size)` (the same for every optimizer seed and method)."""
    from cortex.benchmarks.ehrlich import Ehrlich

    probe = Ehrlich.from_name(name, random_seed=function_seed)
    if probe.num_states > len(STATE_ALPHABET):
        raise ValueError(
            f"Ehrlich {name!r} has {probe.num_states} states; the loop spells at most {len(STATE_ALPHABET)}"
        )
    alphabet = STATE_ALPHABET[: probe.num_states]
    function = Ehrlich.from_name(name, random_seed=function_seed, alphabet=alphabet, **black_box_kwargs)
    initial = function.decode(function.initial_solution(initial_size))
    return DesignProblem(
        name=name,
        black_box=function,
        alphabet=alphabet,
        initial=initial,
        is_mutable=torch.ones(function.dim, dtype=torch.bool),
        learn_feasibility=True,
        target_value=function.optimal_value,
        tokenizer=state_tokenizer(alphabet),
    )


def gb1_problem(initial_size: int = 64, seed: int = 0, top_fraction: float = 0.01, **black_box_kwargs):
    """GB1 (Wu et al. 2016): `initial_size` measured variants below wild type drawn by `seed`; edits only at the
    four sites; the target is the top `top_fraction` fitness of the measured landscape."""
    from cortex.benchmarks.gb1 import GB1Oracle
    from cortex.data.tokenization import CANONICAL_AMINO_ACIDS, ProteinTokenizer

    oracle = GB1Oracle(**black_box_kwargs)
    return DesignProblem(
        name="gb1",
        black_box=oracle,
        alphabet=CANONICAL_AMINO_ACIDS,
        initial=oracle.sample_seeds(initial_size, seed=seed),
        is_mutable=oracle.is_mutable.clone(),
        learn_feasibility=False,
        target_value=oracle.top_fraction_threshold(top_fraction),
        tokenizer=ProteinTokenizer(),
    )


def build_problem(name: str, seed: int = 0, initial_size: int | None = None) -> DesignProblem:
    """ "gb1" (starting set drawn by `seed`, 64 variants by default) or an Ehrlich name (128 by default)."""
    if name == "gb1":
        return gb1_problem(64 if initial_size is None else initial_size, seed=seed)
    return ehrlich_problem(name, 128 if initial_size is None else initial_size)


# ---- configuration and results ---------------------------------------------------------------------------------


@dataclass
class LoopConfig:
    """Loop settings shared by every method (same budget, batch size and starting data).

    method: one of METHODS. batch_size: proposals measured per round. budget: total evaluations, the starting
    set included (None: initial + num_rounds * batch_size). num_rounds: only used for the default budget.
    presolve_rounds: the first rounds of every method are genetic-algorithm generations (the literature's
    GA-presolved start). seed: the optimizer seed (the problem instance is fixed separately).
    Surrogate: feature_dim, ensemble_size, num_epochs (at least; more while fewer than min_train_steps
    optimizer steps were taken: a small early data set still gets a fitted model), train_batch_size,
    learning_rate, max_noise_level (MLM corruption drawn uniformly in [0, max]), max_property_noise_level (the
    same for the property leaves, which see their own, less corrupted copy of the batch: 0 trains them on clean
    sequences, as they score proposals),
    mlm_feasible_only (the MLM leaf learns only from feasible sequences, so the denoiser that LaMBO-2 samples
    from proposes allowed transitions), mlm_seed_pool_only (default True: it learns only from the seed pool, the
    best measured sequences LaMBO-2 starts from, so the denoiser proposes what they hold, a learned recombination
    of them; session 8: GB1 median 70.5 vs 86.5 evaluations to the top 1 % over 20 seeds, GA 72; Ehrlich easy at
    1,280 evaluations on CPU median 0.32 vs 0.14; on two H200s one easy run of five solved it; but Ehrlich medium
    at 384 evaluations, seeds 0-3: 0.094 vs 0.14 with it off, session-6 defaults; with session 9's
    explore_rate_quantile, 0.14 over 5 seeds),
    root_num_blocks / root_dilation (conv root depth and the dilation of its inner blocks: the receptive field
    must span a motif with its spacings), warm_start (start from the previous round's weights; off by default:
    Ehrlich easy, a warm-started surrogate's MLM memorizes the near-duplicate data, so LaMBO-2 returned 89 new
    sequences where a fresh one returned 227, and the loop's rounds averaged 155 vs 302 new candidates),
    property_pooling (how the property branch pools positions, one of `cortex.model.layers.POOLING_TYPES`:
    "max" makes each channel a motif detector that fires at its best placement, the shape of objectives such as
    Ehrlich's max over motif offsets; "mean" averages positions).
    target_transform: "none", "rank" (the objective regressor learns mid-ranks of the feasible values in [0, 1]:
    monotone, so it changes no ordering, and it spreads skewed or multiplicative objectives evenly) or "log"
    (`log_transform`: a product becomes a sum; on 10 Ehrlich-easy run states the acquisition ranked the incumbent's
    improving single mutants at a mean percentile of 0.37 vs 0.44 with ranks, within noise, so not the default).
    LaMBO-2: lambo_steps, num_mutations_per_step, max_guidance_updates, guidance_step_size, kl_weight;
    max_edit_distance (None: unbounded): a trust region, every LaMBO-2 candidate differs from its seed at
    most at this many positions;
    lambo_population (None: 4 * batch_size) candidates started from the lambo_seed_pool (None: batch_size // 2)
    best measured sequences, repeated; the batch is then chosen among every candidate visited, by acquisition
    (a pool of 8 with the explorer floor below lifted Ehrlich easy, 1,280 evaluations median best 0.21 vs 0.125
    with the batch/2 best, but slowed GB1, median 97 vs 68 evaluations to the top 1 %, 3 seeds: an option);
    seed_crossover: fraction of the LaMBO-2 population that starts from one-point crossovers of two pool members
    instead of a pool member (0.25 lifted Ehrlich easy's median at 1,280 evaluations, 0.21 vs 0.14, 5 seeds, but
    slowed GB1, median 94 vs 68 evaluations to the top 1 %, 3 seeds: an option);
    distinct_edits: no two sequences of a batch share an edit away from their seed while others are left
    (`select_batch`);
    kmer_screen (None: off; problems with a feasibility constraint only): LaMBO-2 proposals whose windows of
    this many consecutive tokens all occur in measured feasible sequences are measured first (then those with
    the fewest unseen windows). A screen that
    works from round 1, when the feasibility leaf has seen no infeasible example; an MLM pseudo-likelihood
    screen was tried first and kept infeasible mutants as often as random (60 % vs 62 % feasible, 128 DMP
    samples), see the report of the commit.
    kmer_explore: fraction of each batch reserved for candidates with exactly one unseen k-mer that no measured
    infeasible sequence has proved forbidden (each such k-mer tested once a batch). Without it the screen freezes
    the reachable set: proposals use only k-mers already seen, so no new k-mer is ever seen (Ehrlich easy after
    320 evaluations: 11 of the 14 improving single mutants of the best sequences hold an unseen bigram).
    explore_feasible_frac (default 0.9; None: off; replaces kmer_explore, which must stay 0; acts only where
    `kmer_screen` does, on problems with a feasibility constraint): the explorer quota is set each
    round from the data instead, the largest that keeps the batch's expected feasible fraction at or above this
    value: quota = floor(batch * (1 - value) / (1 - p)), where p is the measured rate at which candidates with
    one unseen k-mer were feasible (`unseen_kmer_feasible_rate`); a constraint that allows most unseen k-mers
    gets many explorers, one that forbids most gets few.
    explore_rate_quantile (default 0.1; None: the posterior mean, as before session 9): p is this quantile of
    the rate's Beta posterior, not its mean, so the floor holds when the rate is lower than the data suggest.
    With the mean the floor held only on average and the rounds landed under it: from the uniform prior (mean
    0.5) round 1 took 25 explorers of 128, of which 16-36 % were feasible (Ehrlich medium and hard on an H200,
    8 runs: 84-88 % feasible rounds); the 0.1 quantile of the prior is 0.1, so 14 explorers. Measured on CPU, 5
    seeds: medium at 384, median 0.14 at 92.4 % feasible (with the mean 0.094 at 89.7 %); easy at 1,280, 0.21
    at 92.6 % (with the mean 0.32 at 90.8 %: easy's explorers are mostly feasible, and fewer find less).
    feasible_floor_scope: "round" (default) or "run": what the floor bounds, the feasible fraction of each batch
    alone or of all the run's proposals so far with the batch. With "run" a round spends the surplus of earlier
    rounds (a pessimistic plan leaves one) on explorers and repays a deficit with fewer: quota =
    floor((F + batch - value * (N + batch)) / (1 - p)) after N measured proposals, F of them feasible. Not the
    default: it lands the run on the floor itself (Ehrlich easy, 1,280 evaluations, seed 0: 89.8 % feasible, best
    0.19; "round": 92.6 %, 0.21). The floor also bounds the rest of the batch
    (`within_feasible_floor`): when too few fully seen LaMBO-2 candidates exist, the risky rows are dropped and
    the slots filled with the acquisition's best fully seen single mutants of the seeds (`safe_fill`), so a
    round still measures `batch_size` (before the fill a very small start starved: cortex-bench's tiny grid, 8
    Ehrlich sequences, batches of 8, ended at 8-9 of 24 evaluations).
    Baselines: ga_survival_quantile, ga_recombine_prob, ga_mutation_prob (None: 1 / L), random_num_mutations.
    baseline_start: "best" (a baseline population smaller than the starting set starts from its best members, so
    it selects from the same starting data as LaMBO-2) or "given" (the first members in the given order, as before
    session 8: a GA of 32 particles saw 32 of GB1's 64 starting variants, of 128 a quarter of Ehrlich's 512 pool).
    fill_batch: when LaMBO-2 returns fewer new candidates than the batch, the free slots take the acquisition's
    best single mutants of the seeds (`safe_fill`; always on under the feasibility floor), so a round measures
    its batch (GB1 with the MLM on the seed pool: the denoiser memorises 16 near-optimal variants and later rounds
    returned 1-15 new sequences of 32).
    max_idle_rounds: stop after this many consecutive rounds that propose nothing new.
    device: where the surrogate trains and LaMBO-2 runs ("cpu", "cuda").
    """

    method: str = "lambo"
    batch_size: int = 128
    num_rounds: int = 8
    budget: int | None = None
    presolve_rounds: int = 0
    seed: int = 0
    feature_dim: int = 32
    ensemble_size: int = 4
    num_epochs: int = 8
    min_train_steps: int = 150
    train_batch_size: int = 64
    learning_rate: float = 3e-3
    max_noise_level: float = 0.5
    max_property_noise_level: float = 0.0
    mlm_feasible_only: bool = True
    mlm_seed_pool_only: bool = True
    root_num_blocks: int = 4
    root_dilation: int = 2
    warm_start: bool = False
    property_pooling: str = "max"
    target_transform: str = "rank"
    lambo_steps: int = 16
    lambo_population: int | None = None
    lambo_seed_pool: int | None = None
    seed_crossover: float = 0.0
    num_mutations_per_step: int = 2
    kmer_screen: int | None = 2
    kmer_explore: float = 0.0
    explore_feasible_frac: float | None = 0.9
    explore_rate_quantile: float | None = 0.1
    feasible_floor_scope: str = "round"
    distinct_edits: bool = True
    max_guidance_updates: int = 4
    guidance_step_size: float = 0.1
    kl_weight: float = 0.0
    max_edit_distance: int | None = None
    ga_survival_quantile: float = 0.1
    ga_recombine_prob: float = 0.5
    ga_mutation_prob: float | None = None
    random_num_mutations: int = 1
    baseline_start: str = "best"
    fill_batch: bool = True
    max_idle_rounds: int = 8
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"LoopConfig.method is {self.method!r}; expected one of {METHODS}")
        for name in ("batch_size", "num_rounds", "num_epochs", "train_batch_size", "lambo_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LoopConfig.{name} is {value!r}; expected an int >= 1")
        if not isinstance(self.min_train_steps, int) or self.min_train_steps < 0:
            raise ValueError(f"LoopConfig.min_train_steps is {self.min_train_steps!r}; expected an int >= 0")
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"LoopConfig.budget is {self.budget!r}; expected None or an int >= 1")
        for name in ("max_noise_level", "max_property_noise_level", "seed_crossover", "kmer_explore"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"LoopConfig.{name} is {getattr(self, name)!r}; expected a float in [0, 1]")
        if self.explore_feasible_frac is not None:
            if not 0.0 < self.explore_feasible_frac < 1.0:
                raise ValueError(
                    f"LoopConfig.explore_feasible_frac is {self.explore_feasible_frac!r}; expected None or a "
                    "float in (0, 1)"
                )
            if self.kmer_explore:
                raise ValueError(
                    f"LoopConfig.kmer_explore is {self.kmer_explore!r} and explore_feasible_frac is "
                    f"{self.explore_feasible_frac!r}; expected kmer_explore 0 when explore_feasible_frac sets "
                    "the explorer quota (set explore_feasible_frac None to use kmer_explore)"
                )
        if self.explore_rate_quantile is not None and not 0.0 < self.explore_rate_quantile < 1.0:
            raise ValueError(
                f"LoopConfig.explore_rate_quantile is {self.explore_rate_quantile!r}; expected None or a float "
                "in (0, 1)"
            )
        if self.feasible_floor_scope not in FLOOR_SCOPES:
            raise ValueError(
                f"LoopConfig.feasible_floor_scope is {self.feasible_floor_scope!r}; expected one of {FLOOR_SCOPES}"
            )
        if self.property_pooling not in POOLING_TYPES:
            raise ValueError(
                f"LoopConfig.property_pooling is {self.property_pooling!r}; expected one of {POOLING_TYPES}"
            )
        if self.baseline_start not in BASELINE_STARTS:
            raise ValueError(
                f"LoopConfig.baseline_start is {self.baseline_start!r}; expected one of {BASELINE_STARTS}"
            )
        if self.target_transform not in TARGET_TRANSFORMS:
            raise ValueError(
                f"LoopConfig.target_transform is {self.target_transform!r}; expected one of {TARGET_TRANSFORMS}"
            )
        for name in ("lambo_population", "lambo_seed_pool", "max_edit_distance"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"LoopConfig.{name} is {value!r}; expected None or an int >= 1")
        if self.kmer_screen is not None and (not isinstance(self.kmer_screen, int) or self.kmer_screen < 1):
            raise ValueError(f"LoopConfig.kmer_screen is {self.kmer_screen!r}; expected None or an int >= 1")
        if not isinstance(self.presolve_rounds, int) or self.presolve_rounds < 0:
            raise ValueError(f"LoopConfig.presolve_rounds is {self.presolve_rounds!r}; expected an int >= 0")

    @property
    def is_model_based(self) -> bool:
        return self.method in ("lambo", "lambo_unguided")


@dataclass
class LoopResult:
    """states (N, L) and values (N,) in evaluation order, rounds (N,) the round of each row, history one dict per
    round (method, problem, seed, round, num_evals, best_so_far, feasible_frac, num_proposed)."""

    states: torch.Tensor
    values: torch.Tensor
    rounds: torch.Tensor
    history: list[dict] = field(default_factory=list)
    stop_reason: str = "budget"

    @property
    def best_so_far(self) -> torch.Tensor:
        """(N,) best value after each evaluation (NaN counts as -inf)."""
        return torch.nan_to_num(self.values, nan=-math.inf).cummax(0).values

    def evals_to_reach(self, target: float) -> int | None:
        """Number of evaluations until a value >= target was measured (None if never)."""
        hit = (self.best_so_far >= target).nonzero()
        return None if hit.numel() == 0 else int(hit[0, 0]) + 1


# ---- the loop ------------------------------------------------------------------------------------------------


class ClosedLoop:
    """Runs one method on one problem; `state_dir` (optional) makes it resumable."""

    def __init__(
        self, problem: DesignProblem, config: LoopConfig, state_dir: str | os.PathLike | None = None
    ):
        self.problem = problem
        self.config = config
        self.state_dir = None if state_dir is None else os.fspath(state_dir)
        self.budget = (
            config.budget
            if config.budget is not None
            else len(problem.initial) + config.num_rounds * config.batch_size
        )
        if self.budget < len(problem.initial):
            raise ValueError(
                f"budget {self.budget} is smaller than the starting set ({len(problem.initial)} sequences); "
                f"expected budget >= {len(problem.initial)}"
            )
        self.model: NeuralTreeModel | None = None
        self.surrogate_quality: dict[str, float | None] | None = None

    # ---- data ----------------------------------------------------------------------------------------------

    def _known(self) -> dict[tuple[int, ...], float]:
        return {
            tuple(row): value for row, value in zip(self.states.tolist(), self.values.tolist(), strict=True)
        }

    def _evaluate(self, states: torch.Tensor) -> torch.Tensor:
        """(B,) values of (B, L) states from the black box, checked to be one float per candidate."""
        values = self.problem.black_box(self.problem.decode(states))
        if not isinstance(values, torch.Tensor) or values.shape != (states.shape[0],):
            raise ValueError(
                f"black box of problem {self.problem.name!r} returned {values!r} for {states.shape[0]} "
                f"candidates; expected a ({states.shape[0]},) tensor"
            )
        return values.float()

    def _append(self, states: torch.Tensor, values: torch.Tensor, round_index: int) -> None:
        self.states = torch.cat([self.states, states])
        self.values = torch.cat([self.values, values])
        self.rounds = torch.cat([self.rounds, torch.full((states.shape[0],), round_index, dtype=torch.int64)])

    def _novel(self, proposals: torch.Tensor, limit: int) -> torch.Tensor:
        """The first `limit` distinct rows of (B, L) proposals not in the data, in order."""
        return proposals[self._novel_index(proposals, limit)]

    def _novel_index(self, proposals: torch.Tensor, limit: int) -> torch.Tensor:
        """(K,) int64 indices of the first `limit` distinct rows of (B, L) proposals not in the data, in order."""
        known = set(map(tuple, self.states.tolist()))
        keep = []
        for index, row in enumerate(map(tuple, proposals.tolist())):
            if row not in known and len(keep) < limit:
                known.add(row)
                keep.append(index)
        return torch.tensor(keep, dtype=torch.int64)

    # ---- run -----------------------------------------------------------------------------------------------

    def run(self, on_round_end: Callable[[ClosedLoop, int], None] | None = None) -> LoopResult:
        """Runs (or resumes) to the budget; `on_round_end(loop, round)` is called after each round is saved."""
        cfg = self.config
        self.stop_reason = "budget"
        if not self._load():
            self.generator = torch.Generator().manual_seed(cfg.seed)
            length = self.problem.length
            self.states = torch.empty(0, length, dtype=torch.int64)
            self.values = torch.empty(0)
            self.rounds = torch.empty(0, dtype=torch.int64)
            self.history: list[dict] = []
            self.round = 0
            initial = self.problem.initial_states
            self._append(initial, self._evaluate(initial), 0)
            self._record(num_proposed=initial.shape[0])
            self._save()
            if on_round_end is not None:
                on_round_end(self, 0)
        optimizer = None
        idle = 0
        while self.states.shape[0] < self.budget:
            self.round += 1
            remaining = self.budget - self.states.shape[0]
            use_baseline = self.round <= cfg.presolve_rounds or not cfg.is_model_based
            if use_baseline:
                if optimizer is None:
                    optimizer = self._replay_baseline()
                proposals = self._baseline_round(optimizer, remaining)
            else:
                optimizer = None
                proposals = self._lambo_round(remaining)
            idle = idle + 1 if proposals == 0 else 0
            self._record(num_proposed=proposals)
            self._save()
            if on_round_end is not None:
                on_round_end(self, self.round)
            if idle >= cfg.max_idle_rounds:
                self.stop_reason = f"no new proposals in {idle} consecutive rounds"
                logger.warning("%s: stopping at %d evaluations", self.stop_reason, self.states.shape[0])
                break
        return LoopResult(self.states, self.values, self.rounds, list(self.history), self.stop_reason)

    def _record(self, num_proposed: int) -> None:
        # Only LaMBO-2 rounds measure the surrogate's predictions (None for the starting set and baselines).
        quality = self.surrogate_quality or {"surrogate_spearman": None, "feasible_auc": None}
        self.surrogate_quality = None
        new = self.rounds == self.round
        values = self.values[new]
        # None when the round measured nothing (a baseline generation answered from the data).
        feasible = float(torch.isfinite(values).float().mean()) if values.numel() else None
        best = torch.nan_to_num(self.values, nan=-math.inf).max()
        self.history.append(
            {
                "method": self.config.method,
                "problem": self.problem.name,
                "seed": self.config.seed,
                "round": self.round,
                "num_evals": int(self.states.shape[0]),
                "best_so_far": float(best),
                "feasible_frac": feasible,
                "num_proposed": int(num_proposed),
                **quality,
            }
        )

    # ---- baselines -----------------------------------------------------------------------------------------

    def _new_baseline(self) -> DiscreteOptimizer:
        cfg, problem = self.config, self.problem
        method = "ga" if cfg.method != "random" else "random"
        vocab = range(len(problem.alphabet))
        seeds = problem.initial_states
        if cfg.baseline_start == "best":
            # The starting set, best first: a population smaller than the set starts from its best members.
            initial = self.rounds == 0
            seeds = self.states[initial][best_first(self.values[initial])]
        if method == "ga":
            return GeneticAlgorithm(
                seeds,
                vocab,
                num_particles=cfg.batch_size,
                mutation_prob=cfg.ga_mutation_prob,
                recombine_prob=cfg.ga_recombine_prob,
                survival_quantile=cfg.ga_survival_quantile,
                is_mutable=problem.is_mutable,
                seed=cfg.seed,
            )
        return RandomMutation(
            seeds,
            vocab,
            num_particles=cfg.batch_size,
            num_mutations=cfg.random_num_mutations,
            is_mutable=problem.is_mutable,
            seed=cfg.seed,
        )

    def _replay_baseline(self) -> DiscreteOptimizer:
        """A baseline optimizer brought to the current round by replaying its earlier rounds on the data.

        Its first ask (the starting set, padded with perturbed copies) and every later ask are answered from the
        data; asks that were never measured (cut by the budget) get NaN, as in the original round."""
        optimizer = self._new_baseline()
        known = self._known()
        cfg = self.config
        num_done = min(self.round - 1, cfg.presolve_rounds) if cfg.is_model_based else self.round - 1
        for _ in range(num_done):
            asked = optimizer.ask()
            optimizer.tell(torch.tensor([known.get(tuple(row), math.nan) for row in asked.tolist()]))
        return optimizer

    def _baseline_round(self, optimizer: DiscreteOptimizer, remaining: int) -> int:
        asked = optimizer.ask()
        novel = self._novel(asked, remaining)
        if novel.shape[0]:
            self._append(novel, self._evaluate(novel), self.round)
        known = self._known()
        optimizer.tell(torch.tensor([known.get(tuple(row), math.nan) for row in asked.tolist()]))
        return int(novel.shape[0])

    # ---- LaMBO-2 -------------------------------------------------------------------------------------------

    def model_config(self) -> NeuralTreeConfig:
        """The surrogate: conv1d root -> sum trunk -> property branch (ensemble) with the objective regressor (and
        the feasibility classifier), generation branch with the MLM leaf."""
        cfg, width = self.config, self.config.feature_dim
        leaves = {
            "objective": {"type": "regressor", "branch": "property", "out_dim": 1},
            "sequence_mlm": {"type": "mlm", "branch": "generation", "root": "sequence"},
        }
        if self.problem.learn_feasibility:
            leaves["feasible"] = {"type": "classifier", "branch": "property", "num_classes": 2}
        root = {
            "type": "conv1d",
            "max_length": self.problem.length,
            "embed_dim": width,
            "num_blocks": cfg.root_num_blocks,
            "dilation": cfg.root_dilation,
        }
        return NeuralTreeConfig(
            roots={"sequence": {**root, "channel_dim": width, "out_dim": width}},
            trunk={"type": "sum", "roots": ["sequence"]},
            branches={
                "property": {
                    "type": "conv1d",
                    "out_dim": width,
                    "channel_dim": width,
                    "ensemble_size": cfg.ensemble_size,
                    "pooling": cfg.property_pooling,
                },
                "generation": {"type": "conv1d", "out_dim": width, "channel_dim": width},
            },
            leaves=leaves,
        )

    def _build_model(self, init_seed: int) -> NeuralTreeModel:
        torch.manual_seed(init_seed)
        model = NeuralTreeModel(self.model_config(), tokenizers={"sequence": self.problem.tokenizer})
        model.attach_corruption({"sequence": MaskCorruption(self.problem.tokenizer.mask_token_id)})
        return model.to(torch.device(self.config.device))

    def _draw_seed(self) -> int:
        return int(torch.randint(2**31 - 1, (1,), generator=self.generator))

    def train_surrogate(self, train_seed: int) -> NeuralTreeModel:
        """Fits the surrogate on all data so far (warm-started from `self.model` when configured)."""
        cfg = self.config
        if self.model is None or not cfg.warm_start:
            self.model = self._build_model(train_seed)
        model = self.model
        sequences = self.problem.decode(self.states)
        encoded = model.tokenize(sequences, root="sequence")
        finite = torch.isfinite(self.values)
        targets = torch.where(finite, self.values, torch.full_like(self.values, math.nan))
        if cfg.target_transform == "rank":
            targets = rank_transform(targets)
        elif cfg.target_transform == "log":
            targets = log_transform(targets)
        targets = targets[:, None]  # (N, 1)
        model.leaves["objective"].fit_target_standardization(targets)
        device = torch.device(cfg.device)
        encoded = {name: value.to(device) for name, value in encoded.items()}
        labels = {"objective": targets}
        if self.problem.learn_feasibility:
            # NaN (unknown) is not evidence either way: -100 leaves it out of the loss.
            feasible = torch.where(self.values.isnan(), -100, finite.long())
            labels["feasible"] = feasible
        # Batches, noise levels and labels are drawn and indexed on `device`: no host-device copy (and so no
        # synchronisation) inside the loop; on a GPU shared by several runs each synchronisation waits for the
        # other processes' time slices (Ehrlich medium on one H200, 10 runs: not one round in 400 s).
        generator = torch.Generator(device=device).manual_seed(train_seed)
        torch.manual_seed(train_seed)  # the roots' corruption draws from the global generator
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        labels = {name: value.to(device) for name, value in labels.items()}
        # Rows the MLM leaf learns from: (N,) bool (NaN = unknown counts as not feasible).
        mlm_rows = finite if cfg.mlm_feasible_only else torch.ones_like(finite)
        if cfg.mlm_seed_pool_only:
            # Only the rows LaMBO-2 starts from: the denoiser it samples from proposes what the best sequences hold.
            pool = torch.zeros_like(finite)
            pool[self.seed_pool()] = True
            mlm_rows = mlm_rows & pool
        mlm_rows = mlm_rows.to(device)
        num_rows = self.states.shape[0]
        num_epochs = max(
            cfg.num_epochs, math.ceil(cfg.min_train_steps / math.ceil(num_rows / cfg.train_batch_size))
        )
        model.train()
        for _ in range(num_epochs):
            order = torch.randperm(num_rows, generator=generator, device=device)
            for start in range(0, num_rows, cfg.train_batch_size):
                index = order[start : start + cfg.train_batch_size]
                # Two views of the batch: the property leaves see a lightly (or not) corrupted copy, the MLM
                # leaf a corrupted copy of the feasible rows only (noise 0 elsewhere: nothing to predict).
                property_noise = (
                    torch.rand(index.shape[0], generator=generator, device=device)
                    * cfg.max_property_noise_level
                )
                mlm_noise = (
                    torch.rand(index.shape[0], generator=generator, device=device) * cfg.max_noise_level
                )
                mlm_noise = torch.where(mlm_rows[index], mlm_noise, torch.zeros_like(mlm_noise))
                inputs = {name: value[index] for name, value in encoded.items()}
                batch_labels = {name: value[index] for name, value in labels.items()}
                property_output = model(
                    root_inputs={"sequence": {**inputs, "noise_level": property_noise}},
                    leaves=list(batch_labels),
                    labels=batch_labels,
                )
                mlm_output = model(
                    root_inputs={"sequence": {**inputs, "noise_level": mlm_noise}},
                    leaves=["sequence_mlm"],
                    labels={"sequence_mlm": None},
                )
                loss = property_output.loss + mlm_output.loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        return model

    def constraints(self) -> DesignConstraints:
        """Fixed length, alphabet characters only, immutable positions where the problem forbids edits, at most
        `max_edit_distance` edits away from the seed."""
        immutable = [int(i) for i in (~self.problem.is_mutable).nonzero().flatten().tolist()]
        allowed = {
            int(i): self.problem.alphabet for i in self.problem.is_mutable.nonzero().flatten().tolist()
        }
        return DesignConstraints(
            immutable_positions=immutable,
            allowed_tokens=allowed,
            max_edit_distance=self.config.max_edit_distance,
            fixed_length=True,
        )

    def _lambo_round(self, remaining: int) -> int:
        cfg = self.config
        train_seed, lambo_seed = self._draw_seed(), self._draw_seed()
        model = self.train_surrogate(train_seed)
        seeds = self.lambo_seeds()
        objective = AcquisitionObjective(
            [("objective", 0)], ["feasible"] if self.problem.learn_feasibility else []
        )
        sampler = LaMBO2(
            model,
            objective,
            self.constraints(),
            LaMBO2Config(
                num_mutations_per_step=cfg.num_mutations_per_step,
                max_guidance_updates=0 if cfg.method == "lambo_unguided" else cfg.max_guidance_updates,
                guidance_step_size=cfg.guidance_step_size,
                kl_weight=cfg.kl_weight,
                resample_edit_positions=True,
                exclude_initial_solution=True,
                root="sequence",
                seed=lambo_seed,
            ),
        )
        state = sampler.run(seeds, num_steps=cfg.lambo_steps)
        # Every candidate the trajectory visited (with the seed it came from), best acquisition first.
        rows = [row for row in state.history if row["step"] > 0]
        rows.sort(key=lambda row: -row["objective"])
        empty = torch.empty(0, self.problem.length, dtype=torch.int64)
        proposals, parents = empty, empty
        if rows:
            proposals = self.problem.encode(
                ["".join(row["sequence"].split()) for row in rows], where="LaMBO-2 candidates"
            )
            parents = self.problem.encode([seeds[row["candidate"]] for row in rows], where="LaMBO-2 seeds")
        limit = min(remaining, cfg.batch_size)
        novel = self.select_batch(proposals, parents, limit)
        if novel.shape[0] < limit and (cfg.fill_batch or self._floor_active):
            # Too few new LaMBO-2 candidates (or the floor dropped risky ones): fill the free slots with the
            # acquisition's best (fully seen, under a k-mer screen) single mutants of the seeds instead of
            # measuring fewer.
            seed_states = self.problem.encode(seeds, where="LaMBO-2 seeds")
            fill = self.safe_fill(model, objective, seed_states, novel, limit - novel.shape[0])
            novel = torch.cat([novel, fill])
        if novel.shape[0]:
            values = self._evaluate(novel)
            self._append(novel, values, self.round)
            self.surrogate_quality = self.prospective_quality(model, novel, values)
        return int(novel.shape[0])

    def select_batch(self, proposals: torch.Tensor, parents: torch.Tensor, limit: int) -> torch.Tensor:
        """Up to `limit` new sequences from (P, L) proposals in acquisition order, with (P, L) `parents` (the seed
        each came from).

        1. (`kmer_screen`, problems with a feasibility constraint) candidates with no unseen k-mer first, then
           the fewest unseen: the batch is filled even when the data are too few to cover the allowed k-mers;
        2. (`distinct_edits`) greedily, a candidate is taken only if none of its edits (position, token) away
           from its parent is already in the batch; a candidate repeating an edit moves behind the others of its
           k-mer tier (the batch is still filled). Without it the
           batch of a round piles up on one neutral edit of the best sequence and its combinations (Ehrlich
           easy: the 64 best single mutants of the best sequence by acquisition held no improving one while the
           surrogate ranked the improving ones in its top 20 %; bench/results/ehrlich.json).
        """
        cfg = self.config
        index = self._novel_index(proposals, proposals.shape[0])
        if cfg.kmer_screen is not None and self.problem.learn_feasibility:
            unseen = self.unseen_kmers(proposals[index])
            logger.info(
                "k-mer screen: %d of %d candidates fully seen", int((unseen == 0).sum()), unseen.numel()
            )
            # The measured feasible rate of one-unseen-k-mer rows: computed once, for the quota and the floor.
            rate = self.unseen_kmer_feasible_rate() if cfg.explore_feasible_frac is not None else None
            quota = self.explore_quota(limit, rate)
            if quota:
                # Explorers: the first `quota` (acquisition order) candidates whose one unseen k-mer is not proved
                # forbidden, one per k-mer, go first (tier -1).
                explorer = torch.zeros_like(unseen, dtype=torch.bool)
                tested: set[int] = set()
                forbidden = set(self.forbidden_kmers().tolist())
                seen = self.seen_kmers()
                for i in (unseen == 1).nonzero().flatten().tolist():
                    (code,) = self.unseen_kmer_codes(proposals[index[i]], seen)
                    if len(tested) < quota and code not in tested and code not in forbidden:
                        tested.add(code)
                        explorer[i] = True
                unseen = torch.where(explorer, -1, unseen)
            order = torch.sort(unseen, stable=True).indices
            index, unseen = index[order], unseen[order]
        if cfg.distinct_edits:
            # Greedy over the screened order; a repeated edit only demotes a candidate within its k-mer tier.
            chosen, used = [], set()
            for i, (row, parent) in enumerate(
                zip(proposals[index].tolist(), parents[index].tolist(), strict=True)
            ):
                edits = {(p, t) for p, (t, s) in enumerate(zip(row, parent, strict=True)) if t != s}
                if len(chosen) < limit and not edits & used:
                    chosen.append(i)
                    used |= edits
            repeated = torch.ones(index.numel(), dtype=torch.int64)
            repeated[chosen] = 0
            tier = (
                unseen if cfg.kmer_screen is not None and self.problem.learn_feasibility else 0
            ) * 2 + repeated
            order = torch.sort(tier, stable=True).indices
            index = index[order]
            if cfg.kmer_screen is not None and self.problem.learn_feasibility:
                unseen = unseen[order]
        index = index[:limit]
        if self._floor_active:
            index = index[self.within_feasible_floor(proposals[index], unseen[:limit], rate)]
        return proposals[index]

    @property
    def _floor_active(self) -> bool:
        cfg = self.config
        return (
            cfg.explore_feasible_frac is not None
            and cfg.kmer_screen is not None
            and self.problem.learn_feasibility
        )

    @torch.inference_mode()
    def safe_fill(
        self,
        model: NeuralTreeModel,
        objective: AcquisitionObjective,
        seeds: torch.Tensor,
        batch: torch.Tensor,
        limit: int,
        max_scored: int = 8192,
    ) -> torch.Tensor:
        """Up to `limit` (K, L) single mutants of the (S, L) `seeds` (best first, repeats ignored), new to the data
        and to the (B, L) `batch`, best `objective` (a fitted acquisition on `model`) first, no two sharing an
        edit. Under a k-mer screen (`kmer_screen` on a problem with a feasibility constraint) only fully seen ones:
        every window of `kmer_screen` tokens occurs in a measured feasible sequence, so under a constraint on
        consecutive tokens (Ehrlich's) they are feasible. At most `max_scored` of them (a seeded random subset)
        are scored."""
        empty = torch.empty(0, self.problem.length, dtype=torch.int64)
        if limit <= 0 or seeds.shape[0] == 0:
            return empty
        unique, first = [], set()
        for row in map(tuple, seeds.tolist()):
            if row not in first:
                first.add(row)
                unique.append(row)
        taken = set(map(tuple, self.states.tolist())) | set(map(tuple, batch.tolist()))
        screened = self.config.kmer_screen is not None and self.problem.learn_feasibility
        seen = self.seen_kmers() if screened else None
        found, found_edits = [], []
        for parent in unique:
            parent = torch.tensor(parent, dtype=torch.int64)
            mutants = single_mutants(parent, self.problem.is_mutable, len(self.problem.alphabet))  # (M, L)
            if screened:
                mutants = mutants[self.unseen_kmers(mutants, seen) == 0]
            position = (mutants != parent).int().argmax(-1)  # (M,) the one edited position
            token = mutants.gather(1, position[:, None])[:, 0]  # (M,)
            for row, edit in zip(mutants.tolist(), zip(position.tolist(), token.tolist()), strict=True):
                if tuple(row) not in taken:
                    taken.add(tuple(row))
                    found.append(row)
                    found_edits.append(edit)
        if not found:
            return empty
        mutants = torch.tensor(found, dtype=torch.int64)
        index = torch.arange(len(found))
        if index.numel() > max_scored:
            generator = torch.Generator().manual_seed(self._draw_seed())
            index = index[torch.randperm(index.numel(), generator=generator)[:max_scored]]
        scores = [
            objective(self.leaf_outputs(model, mutants[chunk], objective.leaves)).float().cpu()
            for chunk in index.split(1024)
        ]
        index = index[torch.sort(torch.cat(scores), descending=True, stable=True).indices]
        chosen, edits = [], set()
        for i in index.tolist():
            edit = found_edits[i]
            if len(chosen) < limit and edit not in edits:
                chosen.append(i)
                edits.add(edit)
        logger.info("fill: %d single mutants added to a batch of %d", len(chosen), batch.shape[0])
        return mutants[chosen] if chosen else empty

    def within_feasible_floor(
        self, batch: torch.Tensor, tiers: torch.Tensor, rate: float | None = None
    ) -> torch.Tensor:
        """(B,) bool: the rows of an ordered (B, L) batch kept so that its expected feasible fraction is at least
        `explore_feasible_frac` (with `feasible_floor_scope` "run": that of the batch and the run's measured
        proposals together, `measured_proposals`). tiers (B,): -1 explorer, else the number of unseen k-mer
        windows. A row is feasible with probability 1 when fully seen, 0 when it holds a k-mer proved forbidden,
        else p ** u (p the planning rate `unseen_kmer_feasible_rate`, u its unseen windows, explorers u = 1). Rows
        that may be infeasible are dropped from the end (the fewest-unseen fill first, then the last explorers)
        until the floor holds; the round then measures fewer than `batch_size` rather than spend evaluations on
        likely infeasible sequences (with a small seed pool the fully seen candidates can run out: Ehrlich easy,
        `lambo_seed_pool=8`, 27 of 64 in a round, and the fill took its feasible fraction to 0.77)."""
        rate = self.unseen_kmer_feasible_rate() if rate is None else rate
        forbidden = self.forbidden_kmers()
        holds_forbidden = torch.isin(self.kmer_codes(batch), forbidden).any(-1)  # (B,)
        probability = torch.where(
            holds_forbidden, 0.0, torch.full(tiers.shape, rate, dtype=torch.float64) ** tiers.abs()
        )  # (B,)
        keep = torch.ones(tiers.shape, dtype=torch.bool)
        feasible_before, measured_before = self.measured_proposals()
        total, size = float(probability.sum()), tiers.numel()
        for row in reversed(range(tiers.numel())):
            if feasible_before + total >= self.config.explore_feasible_frac * (measured_before + size) - 1e-9:
                break
            if probability[row] < 1.0:
                keep[row] = False
                total -= float(probability[row])
                size -= 1
        return keep

    @torch.inference_mode()
    def leaf_outputs(
        self, model: NeuralTreeModel, states: torch.Tensor, leaves: Sequence[str]
    ) -> dict[str, object]:
        """The `leaves`' outputs of the surrogate for (B, L) states (tokenized and moved to the loop's device)."""
        device = torch.device(self.config.device)
        encoded = {
            k: v.to(device) for k, v in model.tokenize(self.problem.decode(states), root="sequence").items()
        }
        return model(root_inputs={"sequence": encoded}, leaves=list(leaves)).leaf_outputs

    @torch.inference_mode()
    def prospective_quality(
        self, model: NeuralTreeModel, states: torch.Tensor, values: torch.Tensor
    ) -> dict[str, float | None]:
        """How well the surrogate that proposed a batch predicted it (measured before it sees the batch):
        `surrogate_spearman` between the ensemble-mean objective prediction and the measured value over the
        feasible rows, `feasible_auc` of the feasibility leaf's probability against measured feasibility (None
        where undefined: fewer than 3 feasible rows, or a single class). states (B, L), values (B,)."""
        leaves = ["objective", "feasible"] if self.problem.learn_feasibility else ["objective"]
        outputs = self.leaf_outputs(model, states, leaves)
        predicted = outputs["objective"].loc.mean(0)[:, 0].float().cpu()  # (B,)
        feasible = torch.isfinite(values)
        quality: dict[str, float | None] = {"surrogate_spearman": None, "feasible_auc": None}
        if int(feasible.sum()) >= 3:
            quality["surrogate_spearman"] = spearman(predicted[feasible], values[feasible])
        if self.problem.learn_feasibility and 0 < int(feasible.sum()) < feasible.numel():
            probability = torch.softmax(outputs["feasible"].logits.float(), dim=-1)[..., 1].mean(0).cpu()
            quality["feasible_auc"] = roc_auc(probability, feasible)
        return quality

    def seed_pool(self) -> torch.Tensor:
        """Row indices of the `lambo_seed_pool` (None: batch_size // 2) best measured sequences, at most the
        LaMBO-2 population, best first (stable order among ties, infeasible ones last)."""
        cfg = self.config
        population = cfg.lambo_population or 4 * cfg.batch_size
        pool = cfg.lambo_seed_pool or max(1, cfg.batch_size // 2)
        return best_first(self.values)[: min(pool, population)]

    def lambo_seeds(self) -> list[str]:
        """The LaMBO-2 seeds of a round: the `lambo_seed_pool` best measured sequences (stable order among ties,
        infeasible ones last), repeated in that order up to `lambo_population` candidates.
        A population larger than the batch gives the acquisition more candidates to choose the batch from.
        (Ties in a random order drawn each round were tried against a plateau, Ehrlich easy's 1,800-2,500
        sequences at their best value: no gain, median best 0.42 either way at 5,888 evaluations, 5 seeds.)"""
        cfg = self.config
        population = cfg.lambo_population or 4 * cfg.batch_size
        best = self.seed_pool()
        states = self.states[best.repeat(math.ceil(population / best.numel()))[:population]]  # (P, L)
        num_children = round(cfg.seed_crossover * population) if best.numel() > 1 else 0
        if num_children:
            # One-point crossovers of two different pool members replace the last seeds: recombination joins
            # what different sequences got right, with a single new junction (one transition to check).
            generator = torch.Generator().manual_seed(self._draw_seed())
            first = torch.randint(best.numel(), (num_children,), generator=generator)
            second = (
                first + torch.randint(1, best.numel(), (num_children,), generator=generator)
            ) % best.numel()
            cut = torch.randint(1, self.problem.length, (num_children, 1), generator=generator)
            left = torch.arange(self.problem.length)[None, :] < cut  # (C, L)
            children = torch.where(left, self.states[best[first]], self.states[best[second]])
            states = torch.cat([states[: population - num_children], children])
        return self.problem.decode(states)

    def explore_quota(self, limit: int, rate: float | None = None) -> int:
        """Batch slots of `limit` for explorers (candidates with one unseen k-mer): round(kmer_explore * limit),
        or with `explore_feasible_frac` f the most that keep the expected feasible fraction >= f when explorers
        are feasible at the measured rate p and the other candidates always: floor(limit * (1 - f) / (1 - p)); with
        `feasible_floor_scope` "run", of the batch and the run's F feasible of N measured proposals together:
        floor((F + limit - f * (N + limit)) / (1 - p)), at least 0."""
        cfg = self.config
        if cfg.explore_feasible_frac is None:
            return round(cfg.kmer_explore * limit)
        rate = self.unseen_kmer_feasible_rate() if rate is None else rate
        if rate >= 1.0:
            return limit
        feasible_before, measured_before = self.measured_proposals()
        slack = feasible_before + limit - cfg.explore_feasible_frac * (measured_before + limit)
        return max(0, min(limit, math.floor(slack / (1.0 - rate) + 1e-9)))

    def measured_proposals(self) -> tuple[int, int]:
        """(F, N) that the feasibility floor carries over: with `feasible_floor_scope` "run", the N proposals
        measured so far (rounds >= 1, NaN rows, unknown, left out) and the F of them feasible; with "round" (0, 0),
        so every batch keeps the floor alone."""
        if self.config.feasible_floor_scope == "round":
            return 0, 0
        measured = (self.rounds > 0) & ~self.values.isnan()
        return int(torch.isfinite(self.values[measured]).sum()), int(measured.sum())

    def unseen_kmer_feasible_rate(self) -> float:
        """The rate the explorer quota and the feasibility floor plan with: of the posterior Beta(a + 1, b + 1)
        (uniform prior) of the probability that a sequence with one k-mer unseen so far is feasible, the
        `explore_rate_quantile` quantile, or with None its mean (a + 1) / (a + b + 2); a and b from
        `unseen_kmer_feasible_counts`."""
        feasible, infeasible = self.unseen_kmer_feasible_counts()
        quantile = self.config.explore_rate_quantile
        if quantile is None:
            return (feasible + 1) / (feasible + infeasible + 2)
        return float(scipy.stats.beta.ppf(quantile, feasible + 1, infeasible + 1))

    def unseen_kmer_feasible_counts(self) -> tuple[int, int]:
        """(a, b): the feasible and infeasible measured sequences of rounds >= 1 with exactly one k-mer unseen in
        the feasible sequences of the earlier rounds (NaN rows, unknown, are left out)."""
        feasible, infeasible = 0, 0
        for round_index in self.rounds.unique().tolist():
            if round_index == 0:
                continue
            earlier = (self.rounds < round_index) & torch.isfinite(self.values)
            seen = self.kmer_codes(self.states[earlier]).unique()
            current = (self.rounds == round_index) & ~self.values.isnan()
            if seen.numel() == 0 or not bool(current.any()):
                continue
            one_unseen = (~torch.isin(self.kmer_codes(self.states[current]), seen)).sum(-1) == 1
            measured_feasible = torch.isfinite(self.values[current])
            feasible += int((one_unseen & measured_feasible).sum())
            infeasible += int((one_unseen & ~measured_feasible).sum())
        return feasible, infeasible

    def unseen_kmers(self, states: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """(N,) int64 for (N, L) states: how many windows of `kmer_screen` consecutive tokens occur in no measured
        feasible sequence (all 0 when none is measured yet); `seen`: `seen_kmers()` when already computed."""
        seen = self.seen_kmers() if seen is None else seen
        if seen.numel() == 0 or states.shape[0] == 0:
            return torch.zeros(states.shape[0], dtype=torch.int64)
        return (~torch.isin(self.kmer_codes(states), seen)).sum(-1)

    def kmer_codes(self, states: torch.Tensor) -> torch.Tensor:
        """(N, L - k + 1) int64 base-|alphabet| codes of the windows of `kmer_screen` tokens of (N, L) states."""
        k, size = self.config.kmer_screen, len(self.problem.alphabet)
        weights = size ** torch.arange(k, dtype=torch.int64)  # (k,)
        return (states.unfold(1, k, 1) * weights).sum(-1)

    def seen_kmers(self) -> torch.Tensor:
        """(S,) distinct k-mer codes of the measured feasible sequences (empty when none is measured)."""
        return self.kmer_codes(self.states[torch.isfinite(self.values)]).unique()

    def unseen_kmer_codes(self, state: torch.Tensor, seen: torch.Tensor) -> list[int]:
        """The distinct k-mer codes of one (L,) state that are not in `seen` (`seen_kmers()`)."""
        codes = self.kmer_codes(state[None])[0]
        return codes[~torch.isin(codes, seen)].unique().tolist()

    def forbidden_kmers(self) -> torch.Tensor:
        """(F,) int64 codes of k-mers proved forbidden: the only unseen k-mer (relative to the measured feasible
        sequences) of a measured infeasible sequence. Exact for constraints on consecutive tokens, as Ehrlich's
        transition matrix."""
        infeasible = self.states[self.values == -math.inf]
        seen = self.seen_kmers()
        if infeasible.shape[0] == 0 or seen.numel() == 0:
            return torch.empty(0, dtype=torch.int64)
        codes = self.kmer_codes(infeasible)  # (I, W)
        unseen = ~torch.isin(codes, seen)  # (I, W)
        # Rows whose unseen windows all hold one code: that code is forbidden.
        first = torch.where(unseen, codes, -1).amax(-1)  # (I,) the largest unseen code (-1: none)
        lowest = torch.where(unseen, codes, torch.iinfo(torch.int64).max).amin(-1)  # (I,)
        single = unseen.any(-1) & (first == lowest)
        return first[single].unique()

    # ---- state -----------------------------------------------------------------------------------------------

    def _metadata(self) -> dict[str, str]:
        return {
            "format": STATE_FORMAT,
            "problem": self.problem.name,
            "config": json.dumps(asdict(self.config), sort_keys=True),
            "round": str(self.round),
            "history": json.dumps(self.history),
            "stop_reason": self.stop_reason,
        }

    def _save(self) -> None:
        if self.state_dir is None:
            return
        os.makedirs(self.state_dir, exist_ok=True)
        tensors = {
            "states": self.states,
            "values": self.values,
            "rounds": self.rounds,
            "generator": self.generator.get_state(),
        }
        if self.model is not None:
            tensors.update(
                {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            )
        path = os.path.join(self.state_dir, STATE_FILE)
        temporary = f"{path}.tmp"
        save_file(tensors, temporary, metadata=self._metadata())
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)  # atomic: a reader sees the old round or the new one, never a mix

    def _same_config(self, saved: dict) -> bool:
        """True when a saved run's config equals this loop's, where an option the saved run predates (absent
        from its config) counts as equal while it has here the value such a run behaved as: the one in
        `PREDATED_OPTIONS`, else the option's default (that option did not exist, so the run behaved as it)."""
        predated = {f.name: f.default for f in fields(LoopConfig)} | PREDATED_OPTIONS
        current = asdict(self.config)
        return all(
            saved[key] == value if key in saved else value == predated[key] for key, value in current.items()
        ) and set(saved) <= set(current)

    def _load(self) -> bool:
        """Restores a saved run; False when there is none. ValueError if it belongs to another run."""
        if self.state_dir is None:
            return False
        path = os.path.join(self.state_dir, STATE_FILE)
        if not os.path.isfile(path):
            return False
        from safetensors import safe_open

        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        if metadata.get("format") != STATE_FORMAT:
            raise ValueError(f"{path} is not a closed-loop state (format {metadata.get('format')!r})")
        expected = json.dumps(asdict(self.config), sort_keys=True)
        if metadata["problem"] != self.problem.name or not self._same_config(json.loads(metadata["config"])):
            raise ValueError(
                f"{path} holds a run of problem {metadata['problem']!r} with config {metadata['config']}; "
                f"expected problem {self.problem.name!r} with config {expected} (use another state_dir)"
            )
        tensors = load_file(path)
        self.states, self.values, self.rounds = tensors["states"], tensors["values"], tensors["rounds"]
        self.generator = torch.Generator()
        self.generator.set_state(tensors["generator"])
        self.round = int(metadata["round"])
        self.history = json.loads(metadata["history"])
        weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        if weights:
            self.model = self._build_model(0)
            self.model.load_state_dict(weights, strict=True)
        logger.info("resumed %s at round %d (%d evaluations)", path, self.round, self.states.shape[0])
        return True


def rank_transform(values: torch.Tensor) -> torch.Tensor:
    """(N,) values -> (N,) mid-ranks of the finite entries scaled to [0, 1] (ties share their mean rank; NaN
    stays NaN). A monotone map, so the acquisition's ordering of predicted values is unchanged, while skewed or
    multiplicative objectives (Ehrlich: a product of motif levels, most values near 0) become evenly spread
    regression targets."""
    finite = values.isfinite()
    kept = values[finite]
    if kept.numel() < 2:
        return torch.where(finite, torch.full_like(values, 0.5), torch.full_like(values, math.nan))
    ordered = kept.sort().values
    below = torch.searchsorted(ordered, kept, side="left")  # (n,) entries strictly smaller
    up_to = torch.searchsorted(ordered, kept, side="right")  # (n,) entries smaller or equal
    ranks = (below + up_to - 1).float() / (2 * (kept.numel() - 1))
    return torch.full_like(values, math.nan).masked_scatter(finite, ranks)


def best_first(values: torch.Tensor) -> torch.Tensor:
    """(N,) row indices of (N,) measured values, highest first, stable among ties; -inf (infeasible) and NaN
    (unknown) last."""
    return torch.sort(torch.nan_to_num(values, nan=-math.inf), descending=True, stable=True).indices


def single_mutants(state: torch.Tensor, is_mutable: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(M, L) every single-site mutant of an (L,) state at its mutable positions ((L,) bool), position-major then
    token order, M = mutable positions x (vocab_size - 1)."""
    positions = is_mutable.nonzero().flatten().repeat_interleave(vocab_size)  # (P * V,)
    tokens = torch.arange(vocab_size).repeat(int(is_mutable.sum()))  # (P * V,)
    keep = tokens != state[positions]
    mutants = state.repeat(int(keep.sum()), 1)  # (M, L)
    mutants[torch.arange(mutants.shape[0]), positions[keep]] = tokens[keep]
    return mutants


def log_transform(values: torch.Tensor) -> torch.Tensor:
    """(N,) values -> (N,) log of the finite entries, values at or below 0 raised to half the smallest positive
    one first (NaN stays NaN). Monotone; a product objective (Ehrlich: motif levels multiplied) becomes a sum,
    which a max-pooled conv with a linear head can extend past the best value measured."""
    finite = values.isfinite()
    positive = values[finite & (values > 0)]
    floor = float(positive.min()) / 2 if positive.numel() else 1.0
    return torch.where(finite, values.clamp_min(floor).log(), torch.full_like(values, math.nan))


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two (N,) tensors (torchmetrics, as the training metrics; 0.0 when either is
    constant, where the correlation is undefined)."""
    x, y = x.float(), y.float()
    if x.numel() < 2 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return 0.0
    return float(spearman_corrcoef(x, y))


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of (N,) scores for (N,) bool labels (torchmetrics' binary AUROC; ties count
    half); both classes must be present."""
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"roc_auc needs both classes; got {positives} positive and {negatives} negative labels"
        )
    return float(binary_auroc(scores.float(), labels.long()))


def run_closed_loop(
    problem: DesignProblem, config: LoopConfig, state_dir: str | os.PathLike | None = None
) -> LoopResult:
    """`ClosedLoop(problem, config, state_dir).run()`."""
    return ClosedLoop(problem, config, state_dir).run()


__all__ = [
    "METHODS",
    "ClosedLoop",
    "DesignProblem",
    "LoopConfig",
    "LoopResult",
    "best_first",
    "build_problem",
    "ehrlich_problem",
    "gb1_problem",
    "log_transform",
    "rank_transform",
    "roc_auc",
    "run_closed_loop",
    "single_mutants",
    "spearman",
    "state_tokenizer",
]
