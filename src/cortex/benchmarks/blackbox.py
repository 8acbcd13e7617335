"""The black-box interface every oracle follows: a batch of candidates in, one value per candidate out.

A test function (Ehrlich), a lookup oracle (GB1) and a user's own assay or simulator all plug into
optimizers the same way: subclass `BlackBox`, say how a batch is checked and converted (`prepare`) and how a
prepared chunk is scored (`evaluate`). `BlackBox.__call__` does the rest: input checks, evaluation-budget
accounting, splitting into chunks of `batch_size`, and optionally spreading the chunks over a process pool.
`FunctionBlackBox` wraps a plain callable on strings.
"""

from __future__ import annotations

import multiprocessing
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any

import torch

Candidates = Sequence[str] | torch.Tensor


class BudgetExceededError(RuntimeError):
    """Raised when a call would take a black box past its evaluation budget; nothing is evaluated."""


class BlackBox(ABC):
    """Batch in, values out: `values = black_box(candidates)`.

    Args:
        batch_size: the most candidates handed to one `evaluate` call (a chunk).
        num_workers: 0 evaluates chunks in this process; N > 0 spreads them over a pool of N processes (the
            black box is pickled to them once per chunk, so keep it cheap to pickle). Call `close()` or use
            the black box as a context manager to shut the pool down.
        start_method: how workers start: "spawn" (default), "forkserver" or "fork". Fork is not the default:
            forking a process whose OpenMP threads have run torch ops deadlocked the children here.
        budget: the most candidates this black box will ever evaluate (None = unlimited). A call that would go
            past it raises `BudgetExceededError` before anything is evaluated. `num_evaluations` counts every
            candidate evaluated so far, duplicates included.

    Subclasses implement `prepare` (check and convert a batch, raising TypeError / ValueError that name the bad
    value and where it is) and `evaluate` (score one prepared chunk: (n,) float tensor, NaN = unknown value).
    """

    def __init__(
        self,
        batch_size: int = 4096,
        num_workers: int = 0,
        budget: int | None = None,
        start_method: str = "spawn",
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0; got {num_workers!r}")
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be None or an int >= 0; got {budget!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.budget = budget
        self.start_method = start_method
        self.num_evaluations = 0
        self._executor: Executor | None = None

    @abstractmethod
    def prepare(self, candidates: Candidates) -> Any:
        """Checks a batch and converts it to the form `evaluate` takes (for example a (B, L) LongTensor).

        The result must support `len()` and slicing along the batch.
        """

    @abstractmethod
    def evaluate(self, prepared: Any) -> torch.Tensor:
        """Scores one prepared chunk of n candidates: (n,) float tensor."""

    @property
    def remaining_budget(self) -> int | None:
        return None if self.budget is None else self.budget - self.num_evaluations

    def __call__(self, candidates: Candidates) -> torch.Tensor:
        """(B,) float values of B candidates (a sequence of strings, or a tensor the subclass accepts)."""
        prepared = self.prepare(candidates)
        num_candidates = len(prepared)
        if self.budget is not None and self.num_evaluations + num_candidates > self.budget:
            raise BudgetExceededError(
                f"{type(self).__name__}: evaluating {num_candidates} candidates would exceed the budget of "
                f"{self.budget} evaluations ({self.num_evaluations} used, {self.remaining_budget} left)"
            )
        chunks = [
            prepared[start : start + self.batch_size] for start in range(0, num_candidates, self.batch_size)
        ]
        if self.num_workers > 0 and len(chunks) > 1:
            results = list(self._pool().map(self.evaluate, chunks))
        else:
            results = [self.evaluate(chunk) for chunk in chunks]
        for chunk, result in zip(chunks, results, strict=True):
            if not isinstance(result, torch.Tensor) or result.shape != (len(chunk),):
                shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
                raise ValueError(
                    f"{type(self).__name__}.evaluate returned {shape} for a chunk of {len(chunk)} candidates; "
                    f"expected a tensor of shape ({len(chunk)},)"
                )
        self.num_evaluations += num_candidates
        if not results:
            return torch.empty(0)
        return torch.cat(results)

    def _pool(self) -> Executor:
        if self._executor is None:
            context = multiprocessing.get_context(self.start_method)
            self._executor = ProcessPoolExecutor(max_workers=self.num_workers, mp_context=context)
        return self._executor

    def close(self) -> None:
        """Shuts down the worker pool, if one was started."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def __enter__(self) -> BlackBox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the black box without the pool that runs them.
        state = self.__dict__.copy()
        state["_executor"] = None
        return state


def check_token_batch(candidates: torch.Tensor, length: int, *, where: str) -> torch.Tensor:
    """A (B, length) integer tensor of token ids as int64; TypeError for a float, complex or bool dtype and
    ValueError for another shape, each naming `where`."""
    if candidates.dtype.is_floating_point or candidates.dtype.is_complex or candidates.dtype == torch.bool:
        raise TypeError(
            f"{where} candidates have dtype {candidates.dtype}; expected an integer tensor of token ids"
        )
    if candidates.dim() != 2 or candidates.shape[1] != length:
        raise ValueError(f"{where} candidates have shape {tuple(candidates.shape)}; expected (B, {length})")
    return candidates.long()


def check_string_batch(candidates: Any, *, where: str) -> list[str]:
    """Returns `candidates` as a list of strings, or raises TypeError naming what was passed instead."""
    if isinstance(candidates, str | bytes):
        raise TypeError(
            f"{where}: got a single {type(candidates).__name__} {candidates[:30]!r}; expected a batch "
            f"(a list of strings or a LongTensor), e.g. [sequence]"
        )
    if not isinstance(candidates, Sequence):
        raise TypeError(
            f"{where}: got {type(candidates).__name__}; expected a sequence of strings or a (B, L) LongTensor"
        )
    for index, item in enumerate(candidates):
        if not isinstance(item, str):
            raise TypeError(f"{where}[{index}] is {type(item).__name__} {item!r}; expected a string")
    return list(candidates)


class FunctionBlackBox(BlackBox):
    """Wraps a user's scoring function on strings: `fn(list[str]) -> sequence of floats` (one per string).

    Args:
        fn: the assay or simulator; must be picklable (a module-level function) when num_workers > 0.
        length: if given, every candidate must have exactly this many characters.
        alphabet: if given, every character must be in it.
        batch_size, num_workers, budget, start_method: see `BlackBox`.
    """

    def __init__(
        self,
        fn: Callable[[list[str]], Sequence[float] | torch.Tensor],
        *,
        length: int | None = None,
        alphabet: str | None = None,
        batch_size: int = 4096,
        num_workers: int = 0,
        budget: int | None = None,
        start_method: str = "spawn",
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, budget=budget, start_method=start_method
        )
        self.fn = fn
        self.length = length
        self.alphabet = None if alphabet is None else frozenset(alphabet)

    def prepare(self, candidates: Candidates) -> list[str]:
        sequences = check_string_batch(candidates, where="FunctionBlackBox candidates")
        for index, sequence in enumerate(sequences):
            if self.length is not None and len(sequence) != self.length:
                raise ValueError(
                    f"FunctionBlackBox candidates[{index}] has length {len(sequence)}; expected {self.length}"
                )
            if self.alphabet is not None:
                for position, char in enumerate(sequence):
                    if char not in self.alphabet:
                        raise ValueError(
                            f"FunctionBlackBox candidates[{index}] has {char!r} at position {position}; "
                            f"expected one of {''.join(sorted(self.alphabet))!r}"
                        )
        return sequences

    def evaluate(self, prepared: list[str]) -> torch.Tensor:
        return torch.as_tensor(self.fn(prepared), dtype=torch.float32).reshape(-1)
