"""Rows -> tensors, inside DataLoader workers: `TreeCollator` tokenizes each root's column with that root's
tokenizer, pads, and builds the typed `TreeBatch` the model and tasks consume.

The original tokenized inside the model's forward, on the training process; here the model only ever sees
`input_ids` / `attention_mask` (int64, 1 = real token) and the tasks see their labels.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import get_worker_info
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


# Each tensor of a packed batch starts on this byte boundary (any dtype's alignment; vectorised kernels).
PACK_ALIGNMENT = 64


@dataclass
class TreeBatch:
    """One batch: per root {"input_ids": (B, L) int64, "attention_mask": (B, L) int64} and per task its labels
    (regression (B, T) float32 with NaN = missing; classification (B,) int64 with -100 = missing; LM tasks
    have none: their targets are the input ids).

    `buffer`: None, or a (nbytes,) uint8 tensor that every tensor of the batch is a view of (`TreeBatch.packed`,
    as `TreeCollator` builds them). A packed batch crosses the DataLoader worker boundary, is pinned and is
    copied to the device as that one buffer, and its tensors are rebuilt as views on the other side: one
    shared-memory handshake, one pinned copy and one host-to-device copy a batch instead of one per tensor
    (issue 8: the per-tensor file-descriptor handshake and pinning were ~40% of the host time of a GPU step).
    A batch whose tensors were replaced by tensors outside the buffer moves tensor by tensor."""

    root_inputs: dict[str, dict[str, torch.Tensor]]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    buffer: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @classmethod
    def packed(
        cls,
        root_inputs: Mapping[str, Mapping[str, torch.Tensor]],
        labels: Mapping[str, torch.Tensor],
        *,
        share_memory: bool = False,
    ) -> TreeBatch:
        """The same tensors copied into one buffer (in shared memory when `share_memory`: a DataLoader worker's
        batch then reaches the main process without another copy)."""
        entries = _entries(root_inputs, labels)
        layout, total = [], 0
        for kind, name, key, tensor in entries:
            if tensor.device.type != "cpu":
                raise ValueError(
                    f"TreeBatch.packed: {kind} {name!r} {key} is on {tensor.device}; expected CPU tensors"
                )
            layout.append((kind, name, key, tensor.dtype, tuple(tensor.shape), total))
            total += -(-tensor.numel() * tensor.element_size() // PACK_ALIGNMENT) * PACK_ALIGNMENT
        buffer = torch.empty(total, dtype=torch.uint8)
        if share_memory:
            buffer.share_memory_()
        batch = cls._from_buffer(buffer, tuple(layout))
        for entry, view in zip(entries, batch._tensors()):
            view.copy_(entry[-1])
        return batch

    @classmethod
    def _from_buffer(cls, buffer: torch.Tensor, layout: tuple) -> TreeBatch:
        """Views of `buffer` per `layout` entries (kind, name, key, dtype, shape, byte offset)."""
        root_inputs: dict[str, dict[str, torch.Tensor]] = {}
        labels: dict[str, torch.Tensor] = {}
        for kind, name, key, dtype, shape, offset in layout:
            size = math.prod(shape) * dtype.itemsize
            view = buffer[offset : offset + size].view(dtype).view(shape)
            if kind == "root":
                root_inputs.setdefault(name, {})[key] = view
            else:
                labels[name] = view
        return cls(root_inputs, labels, buffer)

    def _tensors(self) -> list[torch.Tensor]:
        return [entry[-1] for entry in _entries(self.root_inputs, self.labels)]

    def _layout(self) -> tuple | None:
        """The layout that rebuilds this batch from `buffer`; None when unpacked or a tensor is not a contiguous
        view of the buffer (replaced after packing)."""
        if self.buffer is None:
            return None
        base = self.buffer.untyped_storage().data_ptr() + self.buffer.storage_offset()
        end = base + self.buffer.numel()
        layout = []
        for kind, name, key, tensor in _entries(self.root_inputs, self.labels):
            start = tensor.data_ptr()
            if (
                tensor.device != self.buffer.device
                or not tensor.is_contiguous()
                or not base <= start <= start + tensor.numel() * tensor.element_size() <= end
            ):
                return None
            layout.append((kind, name, key, tensor.dtype, tuple(tensor.shape), start - base))
        return tuple(layout)

    def __reduce__(self):
        layout = self._layout()
        if layout is None:
            return TreeBatch, (self.root_inputs, self.labels)
        return TreeBatch._from_buffer, (self.buffer, layout)

    @property
    def batch_size(self) -> int:
        return next(iter(self.root_inputs.values()))["input_ids"].shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TreeBatch:
        return self._apply(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TreeBatch:
        """Called by DataLoader(pin_memory=True) on the worker's output."""
        return self._apply(torch.Tensor.pin_memory)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TreeBatch:
        """`fn` applied to the buffer once (views rebuilt on its result) when packed, else to every tensor."""
        layout = self._layout()
        if layout is not None:
            return TreeBatch._from_buffer(fn(self.buffer), layout)
        return TreeBatch(
            {root: {key: fn(t) for key, t in inputs.items()} for root, inputs in self.root_inputs.items()},
            {task: fn(t) for task, t in self.labels.items()},
        )


def _entries(
    root_inputs: Mapping[str, Mapping[str, torch.Tensor]], labels: Mapping[str, torch.Tensor]
) -> list[tuple[str, str, str, torch.Tensor]]:
    """A batch's tensors in packing order as (kind, name, key, tensor): root inputs, then labels."""
    entries = [("root", root, key, t) for root, inputs in root_inputs.items() for key, t in inputs.items()]
    return entries + [("label", task, "", t) for task, t in labels.items()]


def padded_length(
    longest: int,
    *,
    pad_to_multiple_of: int | None,
    length_buckets: Sequence[int] | None,
    max_length: int | None,
) -> int:
    """Length a batch whose longest row has `longest` tokens is padded to.

    Length buckets win over the multiple: the smallest bucket >= longest (beyond the largest bucket, the
    multiple applies). The result never exceeds `max_length` (the root's positional capacity).
    """
    target = longest
    bucket = next((b for b in sorted(length_buckets or ()) if b >= longest), None)
    if bucket is not None:
        target = bucket
    elif pad_to_multiple_of:
        target = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    return min(target, max_length) if max_length else target


class RootEncoder:
    """Tokenizes one root's sequences: residue check, spacing for word-level vocabularies, length limit.

    Args:
        tokenizer: the root's tokenizer (ProteinTokenizer or any HF tokenizer).
        max_length: most tokens per sequence (special tokens included); None = tokenizer.model_max_length.
        truncation: False -> a longer sequence is an error; True -> truncated to max_length (logged once
            per table in `check_table`, never silent).
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_length: int | None = None, truncation: bool = False
    ):
        self.tokenizer = tokenizer
        self.max_length = int(max_length or tokenizer.model_max_length)
        self.truncation = truncation
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"tokenizer {type(tokenizer).__name__} has no pad token; expected one for padding"
            )
        # Decided once: BERT-style vocabularies need "M K T" to see residues; character-level ones do not.
        self.separate_residues = len(tokenizer("AC", add_special_tokens=False)["input_ids"]) != 2
        self.num_special = tokenizer.num_special_tokens_to_add(pair=False)
        specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
        self._special_pattern = re.compile("|".join(map(re.escape, specials))) if specials else None
        vocab = tokenizer.get_vocab()
        self.alphabet = frozenset(t for t in vocab if len(t) == 1 and not t.isspace())
        self.unk_token_id = tokenizer.unk_token_id
        # Character-level vocabularies without added special tokens (ProteinTokenizer) map each residue byte
        # to its id through this (256,) table built from the tokenizer's own vocabulary: the same ids as
        # calling the tokenizer (tested), about 50x faster. -1 = not a single-character token.
        self.byte_to_id: np.ndarray | None = None
        if not self.separate_residues and self.num_special == 0:
            table = np.full(256, -1, dtype=np.int64)
            for token, index in vocab.items():
                if len(token) == 1 and ord(token) < 128 and not token.isspace():
                    table[ord(token)] = index
            self.byte_to_id = table

    def check_sequences(self, sequences: pd.Series, *, where: str) -> None:
        """Raises ValueError naming the first bad row: not a string, empty, unknown residue, too long (unless
        truncation is on, then logs how many will be truncated). Assumes one token per residue (true for
        every protein tokenizer); `encode` re-checks with the real tokens."""
        values = sequences.to_numpy()
        kinds = np.fromiter((isinstance(v, str) for v in values), dtype=bool, count=len(values))
        if not kinds.all():
            row = int(np.flatnonzero(~kinds)[0])
            raise ValueError(f"{where}: row {row} is {values[row]!r}; expected a string of residues")
        stripped = sequences.str.replace(r"\s+", "", regex=True)
        if self._special_pattern is not None:
            stripped = stripped.str.replace(
                self._special_pattern, "X" if "X" in self.alphabet else "A", regex=True
            )
        lengths = stripped.str.len().to_numpy()
        if (lengths == 0).any():
            row = int(np.flatnonzero(lengths == 0)[0])
            raise ValueError(f"{where}: row {row} is an empty sequence ({values[row]!r}); expected residues")
        seen = set().union(*map(set, stripped.unique()))
        unknown = seen - self.alphabet
        if unknown:
            char = sorted(unknown)[0]
            row = int(np.flatnonzero(stripped.str.contains(re.escape(char), regex=True).to_numpy())[0])
            raise ValueError(
                f"{where}: row {row} has unknown residue {char!r} at position {stripped.iloc[row].index(char)} "
                f"(sequence starts {values[row][:30]!r}); allowed residues: {''.join(sorted(self.alphabet))}"
            )
        too_long = lengths + self.num_special > self.max_length
        if too_long.any():
            row = int(np.flatnonzero(too_long)[0])
            if not self.truncation:
                raise ValueError(
                    f"{where}: row {row} has {lengths[row]} residues (+{self.num_special} special tokens), longer "
                    f"than the root's max_length {self.max_length}; shorten it or set truncation: true"
                )
            logger.warning("%s: truncating %d rows to %d tokens", where, int(too_long.sum()), self.max_length)

    def _spaced(self, sequence: str) -> str:
        """ "MK<mask>A" -> "M K <mask> A": residues apart, special tokens kept whole."""
        if self._special_pattern is None:
            return " ".join("".join(sequence.split()))
        parts = re.split(f"({self._special_pattern.pattern})", sequence)
        return " ".join(
            p if i % 2 else " ".join("".join(p.split())) for i, p in enumerate(parts) if p.strip()
        )

    def _encode_bytes(self, sequences: Sequence[str], *, where: str) -> list[list[int]]:
        """Fast path of `encode` for plain residue strings and a character-level vocabulary."""
        ids = []
        for row, sequence in enumerate(sequences):
            if len(sequence) > self.max_length and not self.truncation:
                raise ValueError(
                    f"{where}: row {row} has {len(sequence)} tokens, more than max_length {self.max_length}; "
                    "shorten it or set truncation: true"
                )
            row_ids = self.byte_to_id[
                np.frombuffer(sequence[: self.max_length].encode("ascii"), dtype=np.uint8)
            ]
            if (row_ids < 0).any():
                position = int(np.flatnonzero(row_ids < 0)[0])
                raise ValueError(
                    f"{where}: row {row} ({sequence[:30]!r}...) has a residue the tokenizer does not know "
                    f"({sequence[position]!r} at position {position})"
                )
            if len(row_ids) == 0:
                raise ValueError(f"{where}: row {row} is an empty sequence; expected residues")
            ids.append(row_ids.tolist())
        return ids

    def encode(self, sequences: Sequence[str], *, where: str = "batch") -> list[list[int]]:
        """Token id lists (special tokens included); raises ValueError on unknown tokens or excess length."""
        for row, sequence in enumerate(sequences):
            if not isinstance(sequence, str):
                raise ValueError(
                    f"{where}: row {row} is {type(sequence).__name__} {sequence!r}; expected a string of residues"
                )
        if self.byte_to_id is not None and all(s.isascii() and s.isalpha() for s in sequences):
            return self._encode_bytes(sequences, where=where)
        texts = [self._spaced(s) for s in sequences] if self.separate_residues else list(sequences)
        ids = self.tokenizer(
            texts, add_special_tokens=True, truncation=self.truncation, max_length=self.max_length
        )["input_ids"]
        for row, row_ids in enumerate(ids):
            if len(row_ids) > self.max_length:
                raise ValueError(
                    f"{where}: row {row} has {len(row_ids)} tokens, more than max_length {self.max_length}; "
                    "shorten it or set truncation: true"
                )
            if len(row_ids) <= self.num_special:
                raise ValueError(f"{where}: row {row} is an empty sequence; expected residues")
            if self.unk_token_id is not None and self.unk_token_id in row_ids:
                raise ValueError(
                    f"{where}: row {row} ({sequences[row][:30]!r}...) has a residue the tokenizer does not know "
                    f"(position {row_ids.index(self.unk_token_id) - (self.num_special > 0)})"
                )
        return ids


class TreeCollator:
    """Turns a list of rows (mappings column -> value) into a `TreeBatch`; runs in DataLoader workers.

    Args:
        encoders: root name -> `RootEncoder` (its tokenizer, max_length, truncation).
        tasks: the tasks whose roots and labels the batch carries; each task's `inputs` maps root -> column.
        pad_to_multiple_of: pad each batch to a multiple of this (8 suits tensor cores); None = longest.
        length_buckets: optional sorted lengths to pad to instead (fewer distinct shapes for compilation).
    """

    def __init__(
        self,
        encoders: Mapping[str, RootEncoder],
        tasks: Sequence[Any],
        *,
        pad_to_multiple_of: int | None = 8,
        length_buckets: Sequence[int] | None = None,
    ) -> None:
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of}; expected a positive integer or None")
        self.root_columns: dict[str, str] = {}
        for task in tasks:
            for root, column in task.inputs.items():
                if root not in encoders:
                    raise ValueError(
                        f"task {task.name!r} feeds root {root!r}, which has no tokenizer; roots: {sorted(encoders)}"
                    )
                if self.root_columns.setdefault(root, column) != column:
                    raise ValueError(
                        f"root {root!r} is fed column {self.root_columns[root]!r} and {column!r} by different "
                        "tasks of one loader; expected one column per root"
                    )
        self.encoders = {root: encoders[root] for root in self.root_columns}
        self.tasks = list(tasks)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.length_buckets = sorted(length_buckets) if length_buckets else None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> TreeBatch:
        root_inputs = {}
        for root, column in self.root_columns.items():
            encoder = self.encoders[root]
            ids = encoder.encode([row[column] for row in rows], where=f"root {root!r} column {column!r}")
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            width = padded_length(
                int(lengths.max()),
                pad_to_multiple_of=self.pad_to_multiple_of,
                length_buckets=self.length_buckets,
                max_length=encoder.max_length,
            )
            input_ids = np.full((len(ids), width), encoder.tokenizer.pad_token_id, dtype=np.int64)
            for i, row_ids in enumerate(ids):
                input_ids[i, : len(row_ids)] = row_ids
            attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, L)
            root_inputs[root] = {
                "input_ids": torch.from_numpy(input_ids),
                "attention_mask": torch.from_numpy(attention_mask),
            }
        labels = {}
        for task in self.tasks:
            task_labels = task.collate_labels(rows)
            if task_labels is not None:
                labels[task.name] = task_labels
        # In a worker the buffer is allocated in shared memory, where the batch has to go anyway.
        return TreeBatch.packed(root_inputs, labels, share_memory=get_worker_info() is not None)
