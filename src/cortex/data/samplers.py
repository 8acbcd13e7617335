"""Which row indices an epoch visits: round-robin minority upsampling (spec section 4) and a seeded,
per-epoch, distributed-aware shuffling sampler.

`round_robin_longest` and `MinorityUpsampler` reproduce the original exactly. The randomised variant draws
from its own `random.Random(seed)` with the original's call order, so that epoch e of
`MinorityUpsampler(groups, seed=s, shuffle=True)` equals the e-th consecutive iteration of the original's
`RandomizedMinorityUpsampler` after `random.seed(s)`; `set_epoch(e)` picks that epoch directly.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler


def round_robin_longest(iterables: Sequence[Sequence[Any]]) -> Iterator[Any]:
    """Yields one element of each non-empty iterable in turn, cycling the shorter ones, and stops at the
    first exhausted longest iterable (spec section 4).

    [range(5), "ABCDE", ["cat", "dog", "rabbit"]] -> 0 A cat 1 B dog 2 C rabbit 3 D cat 4 E dog.
    Raises ValueError when `iterables` itself is empty (as the original's `max()` did).
    """
    if len(iterables) == 0:
        raise ValueError("round_robin_longest needs at least one iterable; got an empty list")
    max_len = max(len(it) for it in iterables)
    iterators = [itertools.cycle(it) if len(it) < max_len else iter(it) for it in iterables if len(it) > 0]
    for iterator in itertools.cycle(iterators):
        try:
            yield next(iterator)
        except StopIteration:
            return


def _shard(indices: list[int], rank: int, world_size: int) -> list[int]:
    """Rank `rank`'s share of `indices`, wrapped around so that every rank gets ceil(n / world_size) items
    (as torch's DistributedSampler pads); the identity for world_size 1."""
    if world_size == 1 or not indices:
        return indices
    per_rank = -(-len(indices) // world_size)
    padded = list(itertools.islice(itertools.cycle(indices), per_rank * world_size))
    return padded[rank::world_size]


class ResumableSampler(Sampler[int]):
    """A sampler whose epoch order is a pure function `epoch_indices(epoch)` and whose position can be saved.

    State: {"epoch": the epoch of the current (or last) iteration, "num_yielded": indices it has yielded}.
    `load_state_dict(state)` makes the next `__iter__` skip the first `num_yielded` indices of epoch
    `state["epoch"]`, if that is still the epoch set when the iteration starts (a different epoch starts from
    its beginning: the saved position belongs to the other epoch). `__len__` stays the full epoch length.
    Subclasses implement `epoch_indices(epoch) -> list[int]` and call `super().__init__()`.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self._iter_epoch = 0
        self._num_yielded = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"set_epoch got epoch={epoch}; expected a non-negative integer")
        self.epoch = epoch

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} must implement epoch_indices(epoch) -> list[int]")

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices(self.epoch)
        start = 0
        if self._resume is not None:
            epoch, start = self._resume
            self._resume = None
            start = start if epoch == self.epoch else 0
        self._iter_epoch, self._num_yielded = self.epoch, start
        return self._yield_from(indices, start)

    def _yield_from(self, indices: list[int], start: int) -> Iterator[int]:
        for index in indices[start:]:
            self._num_yielded += 1
            yield index

    def __len__(self) -> int:
        return len(self.epoch_indices())

    def state_dict(self) -> dict[str, int]:
        """{"epoch", "num_yielded"}: plain ints (checkpoints load with `torch.load(weights_only=True)`)."""
        if self._resume is not None:
            return {"epoch": self._resume[0], "num_yielded": self._resume[1]}
        return {"epoch": self._iter_epoch, "num_yielded": self._num_yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Sets the epoch to `state_dict["epoch"]` and resumes its next iteration after `num_yielded` indices."""
        where = f"{type(self).__name__}.load_state_dict"
        if set(state_dict) != {"epoch", "num_yielded"}:
            raise ValueError(f"{where} got keys {sorted(state_dict)}; expected ['epoch', 'num_yielded']")
        epoch, num_yielded = int(state_dict["epoch"]), int(state_dict["num_yielded"])
        self.set_epoch(epoch)
        length = len(self)
        if not 0 <= num_yielded <= length:
            raise ValueError(
                f"{where} got num_yielded={num_yielded} for epoch {epoch}; expected 0 <= num_yielded <= {length} "
                "(the epoch's length: was the checkpoint written with other data, seed or world size?)"
            )
        self._resume = (epoch, num_yielded)


class MinorityUpsampler(ResumableSampler):
    """Round-robin over groups of row indices, cycling the smaller groups until the largest is exhausted.

    Args:
        groups: one list of row indices per group (for example per class); empty groups are skipped.
        shuffle: reshuffle the group order and each group every epoch (the original's
            RandomizedMinorityUpsampler); False gives the original's deterministic MinorityUpsampler.
        seed: seed of the private `random.Random` that drives the shuffles.
        rank, world_size: distributed shard. Every rank shuffles identically, then takes its share of each
            group, so each rank's epoch is balanced and all ranks yield the same number of indices.

    Epoch e (set with `set_epoch`, as Lightning does for distributed samplers) is a pure function of
    (groups, seed, e, rank, world_size).
    """

    def __init__(
        self,
        groups: Sequence[Sequence[int]],
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"MinorityUpsampler got rank={rank}, world_size={world_size}; expected 0 <= rank < world_size"
            )
        self.groups = [list(map(int, group)) for group in groups]
        if len(self.groups) == 0:
            raise ValueError("MinorityUpsampler needs at least one group of indices; got none")
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # RNG state at the start of each epoch already reached: epochs replay from the nearest one.
        self._rng_states: dict[int, Any] = {0: random.Random(seed).getstate()}
        self._cached: tuple[int, list[int]] | None = None

    def _shuffled_groups(self, epoch: int) -> list[list[int]]:
        start = max(e for e in self._rng_states if e <= epoch)
        rng = random.Random()
        rng.setstate(self._rng_states[start])
        for e in range(start, epoch + 1):
            # The original's call order: shuffle the list of group copies, then each group in that order.
            index_list = [group.copy() for group in self.groups]
            rng.shuffle(index_list)
            for group in index_list:
                rng.shuffle(group)
            self._rng_states[e + 1] = rng.getstate()
        return index_list

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """The indices this rank visits in `epoch` (default: the epoch set last)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        groups = self._shuffled_groups(epoch) if self.shuffle else [group.copy() for group in self.groups]
        groups = [_shard(group, self.rank, self.world_size) for group in groups]
        indices = list(round_robin_longest(groups))
        self._cached = (epoch, indices)
        return indices


class EpochShuffleSampler(ResumableSampler):
    """A seeded permutation of range(num_rows) per epoch, sharded like torch's DistributedSampler.

    Epoch e's order is `torch.randperm(num_rows, generator=manual_seed(seed + e))`, so it depends only on
    (seed, epoch), never on how many batches were drawn before; `set_epoch` selects it. With shuffle=False
    the order is 0..num_rows-1. Each rank gets ceil(num_rows / world_size) indices (wrapped around).
    """

    def __init__(
        self, num_rows: int, *, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__()
        if num_rows < 0:
            raise ValueError(f"EpochShuffleSampler got num_rows={num_rows}; expected >= 0")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"EpochShuffleSampler got rank={rank}, world_size={world_size}; expected 0 <= rank < world_size"
            )
        self.num_rows = num_rows
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_rows, generator=generator).tolist()
        else:
            order = list(range(self.num_rows))
        return _shard(order, self.rank, self.world_size)

    def __len__(self) -> int:
        return -(-self.num_rows // self.world_size) if self.num_rows else 0


def group_indices(keys: Iterable[Any]) -> list[list[int]]:
    """Positional indices per distinct key, in sorted key order (the original's
    `df.groupby(cols).indices.values()`). Missing keys (None/NaN) are an error: every row needs a group."""
    groups: dict[Any, list[int]] = {}
    for position, key in enumerate(keys):
        if key is None or key != key:  # NaN != NaN
            raise ValueError(f"balancing key of row {position} is missing ({key!r}); expected a group label")
        groups.setdefault(key, []).append(position)
    return [groups[key] for key in sorted(groups)]
