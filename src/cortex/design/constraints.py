"""Design constraints as first-class objects: what a LaMBO-2 proposal must satisfy to be accepted.

`DesignConstraints` is the user-facing description (positions, residues, budgets, predicates); `bind` turns it
into `BoundConstraints`, tensors on the population's device that answer two questions without host syncs:
which tokens may be sampled where (`sampling_mask`), and which candidates are feasible (`is_feasible`).
Only user predicates need strings, so only they decode (one decode per check).

Conventions: positions index tokens of a seed (0-based, the padded layout of `input_ids`); edit distance is the
number of token positions at which a candidate differs from its seed (designs keep token positions: infilling
substitutes tokens and never inserts or deletes, so this is the Levenshtein distance restricted to
substitutions). "Fixed length" forbids the gap token ('-'), the only way a design changes the residue count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from cortex.data.tokenization import token_masks

logger = logging.getLogger(__name__)

SequencePredicate = Callable[[list[str]], Sequence[bool]]


@dataclass(frozen=True)
class DesignConstraints:
    """Constraints every accepted candidate satisfies.

    immutable_positions: token positions that never change (for every seed).
    allowed_tokens: position -> the residues allowed there (a string, "KR", or a list of tokens).
    max_edit_distance: most positions at which a candidate may differ from its seed (None = no budget).
    fixed_length: keep each seed's residue count (the gap token is never sampled and never accepted).
    predicates: callables list[str] -> sequence of bool, True = feasible; run on decoded candidates.
    gap_token: the token that deletes a residue (protein vocabulary: '-').
    """

    immutable_positions: Sequence[int] = ()
    allowed_tokens: Mapping[int, str | Sequence[str]] = field(default_factory=dict)
    max_edit_distance: int | None = None
    fixed_length: bool = False
    predicates: Sequence[SequencePredicate] = ()
    gap_token: str = "-"

    def __post_init__(self) -> None:
        for position in self.immutable_positions:
            if not isinstance(position, int) or isinstance(position, bool) or position < 0:
                raise ValueError(
                    f"DesignConstraints.immutable_positions has {position!r}; expected non-negative int positions"
                )
        for position in self.allowed_tokens:
            if not isinstance(position, int) or isinstance(position, bool) or position < 0:
                raise ValueError(
                    f"DesignConstraints.allowed_tokens has key {position!r}; expected non-negative int positions"
                )
        if self.max_edit_distance is not None and (
            not isinstance(self.max_edit_distance, int)
            or isinstance(self.max_edit_distance, bool)
            or self.max_edit_distance < 0
        ):
            raise ValueError(
                f"DesignConstraints.max_edit_distance is {self.max_edit_distance!r}; expected None or an int >= 0"
            )
        for index, predicate in enumerate(self.predicates):
            if not callable(predicate):
                raise ValueError(
                    f"DesignConstraints.predicates[{index}] is {predicate!r}; expected a callable"
                )

    def bind(
        self, seed_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer: PreTrainedTokenizerBase
    ) -> BoundConstraints:
        """Tensors for seeds `seed_ids` (N, L) with `attention_mask` (N, L), on the seeds' device."""
        if seed_ids.dim() != 2 or tuple(attention_mask.shape) != tuple(seed_ids.shape):
            raise ValueError(
                f"seed_ids {tuple(seed_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be (N, L)"
            )
        num_seeds, length = seed_ids.shape
        device = seed_ids.device
        _, samplable = token_masks(tokenizer)
        vocab_size = samplable.shape[0]
        real = attention_mask.bool()

        is_mutable = real.clone()
        for position in self.immutable_positions:
            if position >= length:
                raise ValueError(
                    f"immutable position {position} is outside the seeds (padded length {length}); "
                    f"expected positions in [0, {length})"
                )
            is_mutable[:, position] = False

        # (L, V): tokens that may stand at each position (sampling and feasibility).
        position_allowed = torch.ones(length, vocab_size, dtype=torch.bool)
        vocab = tokenizer.get_vocab()
        for position, residues in self.allowed_tokens.items():
            if position >= length:
                raise ValueError(
                    f"allowed_tokens position {position} is outside the seeds (padded length {length}); "
                    f"expected positions in [0, {length})"
                )
            tokens = list(residues)
            unknown = [t for t in tokens if t not in vocab]
            if not tokens or unknown:
                raise ValueError(
                    f"allowed_tokens[{position}] = {residues!r} has unknown token(s) {unknown} or is empty; "
                    f"expected tokens of the vocabulary {sorted(vocab)}"
                )
            row = torch.zeros(vocab_size, dtype=torch.bool)
            row[[vocab[t] for t in tokens]] = True
            position_allowed[position] = row

        gap_ids = torch.zeros(vocab_size, dtype=torch.bool)
        if self.fixed_length and self.gap_token in vocab:
            gap_ids[vocab[self.gap_token]] = True
        sampling_mask = samplable[None, :] & position_allowed & ~gap_ids[None, :]  # (L, V)
        empty = ~sampling_mask.any(-1)
        if bool(empty.any()):
            position = int(empty.nonzero()[0, 0])
            raise ValueError(
                f"no samplable token is allowed at position {position} (allowed_tokens "
                f"{self.allowed_tokens.get(position)!r}, fixed_length {self.fixed_length}); expected at least one"
            )
        return BoundConstraints(
            seed_ids=seed_ids.clone(),
            attention_mask=attention_mask.clone(),
            is_mutable=is_mutable,
            position_allowed=position_allowed.to(device),
            sampling_mask=sampling_mask.to(device),
            gap_ids=gap_ids.to(device),
            fixed_length=self.fixed_length,
            max_edit_distance=self.max_edit_distance,
            predicates=tuple(self.predicates),
            tokenizer=tokenizer,
            num_seeds=num_seeds,
        )


@dataclass
class BoundConstraints:
    """Constraints bound to N seeds. Tensors: seed_ids, attention_mask, is_mutable (N, L); position_allowed,
    sampling_mask (L, V) bool; gap_ids (V,) bool."""

    seed_ids: torch.Tensor
    attention_mask: torch.Tensor
    is_mutable: torch.Tensor
    position_allowed: torch.Tensor
    sampling_mask: torch.Tensor
    gap_ids: torch.Tensor
    fixed_length: bool
    max_edit_distance: int | None
    predicates: tuple[SequencePredicate, ...]
    tokenizer: PreTrainedTokenizerBase
    num_seeds: int

    def edit_distance(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) ids -> (N,) long: positions at which each candidate differs from its seed."""
        return ((input_ids != self.seed_ids) & self.attention_mask.bool()).sum(-1)

    def editable_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) bool: mutable positions an edit may touch without exceeding the edit budget by itself
        (once a candidate has used its budget, only already-edited positions stay editable)."""
        if self.max_edit_distance is None:
            return self.is_mutable
        within_budget = self.edit_distance(input_ids) < self.max_edit_distance  # (N,)
        return self.is_mutable & (within_budget[:, None] | (input_ids != self.seed_ids))

    def is_feasible(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) ids -> (N,) bool: True where every constraint holds.

        Predicates see the decoded strings (the only host round trip, and only when predicates are given).
        """
        if tuple(input_ids.shape) != tuple(self.seed_ids.shape):
            raise ValueError(
                f"candidates have shape {tuple(input_ids.shape)}; expected {tuple(self.seed_ids.shape)} (the seeds')"
            )
        real = self.attention_mask.bool()
        changed = (input_ids != self.seed_ids) & real
        feasible = ~(changed & ~self.is_mutable).any(-1)
        length = input_ids.shape[1]
        allowed_here = self.position_allowed[
            torch.arange(length, device=input_ids.device)[None, :], input_ids
        ]
        feasible &= ~(~allowed_here & changed).any(-1)
        if self.fixed_length:
            gaps = (self.gap_ids[input_ids] & real).sum(-1)
            seed_gaps = (self.gap_ids[self.seed_ids] & real).sum(-1)
            feasible &= gaps == seed_gaps
        if self.max_edit_distance is not None:
            feasible &= changed.sum(-1) <= self.max_edit_distance
        if self.predicates:
            sequences = decode(self.tokenizer, input_ids, self.attention_mask)
            for index, predicate in enumerate(self.predicates):
                verdict = torch.as_tensor(list(predicate(sequences)), dtype=torch.bool)
                if tuple(verdict.shape) != (len(sequences),):
                    raise ValueError(
                        f"constraint predicate {index} ({predicate!r}) returned {tuple(verdict.shape)} values; "
                        f"expected one bool per candidate ({len(sequences)})"
                    )
                feasible &= verdict.to(feasible.device)
        return feasible


def decode(
    tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> list[str]:
    """(N, L) ids -> N strings of the real tokens, joined without spaces (the protein convention)."""
    rows = input_ids.detach().cpu().tolist()
    lengths = attention_mask.detach().cpu().sum(-1).tolist()
    return ["".join(tokenizer.convert_ids_to_tokens(row[:n])) for row, n in zip(rows, lengths)]


__all__ = ["BoundConstraints", "DesignConstraints", "SequencePredicate", "decode"]
