"""`TreeDataModule`: one DataLoader per task, combined for multi-task training (spec 6.2).

Rows are checked once in `setup` (columns, labels, residues, lengths), then turned into tensors by
`TreeCollator` inside the DataLoader workers. Tokenizers and each root's `max_length` come from the model
(an instance, its config, or a `save_pretrained` directory), so a task never needs a hand-built tokenizer.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from cortex.data.collate import RootEncoder, TreeCollator
from cortex.data.samplers import EpochShuffleSampler, MinorityUpsampler, ResumableSampler, group_indices
from cortex.data.tables import SPLITS, TableData, require_columns
from cortex.data.tokenization import load_tokenizer

logger = logging.getLogger(__name__)

COMBINE_MODES: tuple[str, ...] = ("min_size", "max_size_cycle", "max_size", "sequential")


class RowDataset(Dataset):
    """Rows of a DataFrame restricted to `columns`, as mappings column -> Python value."""

    def __init__(self, frame: pd.DataFrame, columns: Sequence[str]) -> None:
        self.columns = {column: frame[column].tolist() for column in dict.fromkeys(columns)}
        self.num_rows = len(frame)

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {column: values[index] for column, values in self.columns.items()}


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `ResumableSampler` whose position Lightning saves in its checkpoints.

    Lightning's fit loop stores `state_dict()` of every train loader that has one (`_Stateful`) and, when a
    run restarts mid-epoch, calls `load_state_dict` before iterating again; the resumed iteration then yields
    exactly the batches the interrupted one had left (the sampler skips `batches_yielded * batch_size`
    indices, so no skipped batch is collated, and `num_workers` makes no difference).

    State: {"epoch": the epoch of the current iteration, "batches_yielded": batches handed to the consumer}.
    Counting happens in the main process, so it does not see worker prefetching; it counts what the consumer
    took, which is what the training loop has trained on (Lightning does not prefetch from a loader of known
    length). `iter()` is lazy: the sampler's epoch is read at the first batch, after Lightning's `set_epoch`.
    `len()` stays the full epoch length (Lightning counts the resumed epoch's batches from its own progress).
    """

    def __init__(
        self, dataset: Dataset, *, sampler: ResumableSampler, batch_size: int, **kwargs: Any
    ) -> None:
        super().__init__(dataset, sampler=sampler, batch_size=batch_size, **kwargs)
        self._epoch = sampler.epoch
        self._batches_yielded = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        self._epoch, self._batches_yielded = self.sampler.epoch, 0
        return self._batches()

    def _batches(self) -> Iterator[Any]:
        epoch, skip = self.sampler.epoch, 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            skip = self._resume["batches_yielded"]
            indices = min(skip * self.batch_size, len(self.sampler))
            self.sampler.load_state_dict({"epoch": epoch, "num_yielded": indices})
        self._resume = None
        self._epoch, self._batches_yielded = epoch, skip
        for batch in super().__iter__():
            self._batches_yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """{"epoch", "batches_yielded"}: plain ints (checkpoints load with `torch.load(weights_only=True)`)."""
        if self._resume is not None:
            return dict(self._resume)
        return {"epoch": self._epoch, "batches_yielded": self._batches_yielded}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Sets the sampler's epoch and makes the next iteration of that epoch start after `batches_yielded`."""
        if set(state_dict) != {"epoch", "batches_yielded"}:
            raise ValueError(
                f"ResumableDataLoader.load_state_dict got keys {sorted(state_dict)}; "
                "expected ['batches_yielded', 'epoch']"
            )
        epoch, batches = int(state_dict["epoch"]), int(state_dict["batches_yielded"])
        self.sampler.set_epoch(epoch)
        if not 0 <= batches <= len(self):
            raise ValueError(
                f"ResumableDataLoader.load_state_dict got batches_yielded={batches} for epoch {epoch}; expected "
                f"0 <= batches_yielded <= {len(self)} (the epoch's batches: was the checkpoint written with "
                "other data, batch size, seed or world size?)"
            )
        self._resume = {"epoch": epoch, "batches_yielded": batches}


def tokenizers_from_model(model: Any) -> tuple[dict[str, PreTrainedTokenizerBase], dict[str, int | None]]:
    """(tokenizer per root, max_length per root) from a model directory written by `save_pretrained`
    (config.json + tokenizer/<root>/), a `NeuralTreeModel` (its `tokenizers`), or a `NeuralTreeConfig` (the
    tokenizers its roots name, built as the model would)."""
    from cortex.model.configuration_neural_tree import NeuralTreeConfig
    from cortex.model.modeling_neural_tree import TOKENIZER_DIR, build_tokenizer

    if isinstance(model, str | os.PathLike):
        config = NeuralTreeConfig.from_pretrained(os.fspath(model))
        tokenizers = {
            root: load_tokenizer(os.path.join(model, TOKENIZER_DIR, root)) for root in config.root_configs
        }
    elif isinstance(model, NeuralTreeConfig):
        config = model
        tokenizers = {root: build_tokenizer(rc) for root, rc in config.root_configs.items()}
    else:
        config, tokenizers = model.config, dict(model.tokenizers)
    for root, tokenizer in tokenizers.items():
        if tokenizer is None:
            raise ValueError(
                f"root {root!r} has no tokenizer in the model; pass tokenizers={{{root!r}: ...}} to the data module"
            )
    max_lengths = {root: rc.max_length for root, rc in config.root_configs.items()}
    return tokenizers, max_lengths


def set_sharing_strategy(strategy: str, worker_id: int) -> None:
    """DataLoader `worker_init_fn`: how this worker's batches reach the main process (the sender picks; the main
    process rebuilds either kind). "file_system" names a shared-memory file, which the main process opens; torch's
    default "file_descriptor" passes a descriptor over a new authenticated socket connection per storage, which
    was a third of the main process's host time per GPU training step (issue 8 profile)."""
    torch.multiprocessing.set_sharing_strategy(strategy)


class TreeDataModule(L.LightningDataModule):
    """Loaders for a set of tasks.

    Args:
        tasks: the tasks (a list, or a mapping name -> task as Hydra builds it).
        model: where tokenizers and root max lengths come from (model instance, config, or directory).
        tokenizers: root -> tokenizer, instead of `model`; `max_lengths` then defaults to the tokenizers'.
        data: task name -> `TableData` (or a mapping split -> source), overriding the task's own `data`.
        batch_size / eval_batch_size: rows per batch in training / evaluation (eval defaults to batch_size).
        num_workers: DataLoader worker processes that tokenize; batches are identical for every value.
        seed: seed of every sampler (task i uses seed + i); epochs are selected with set_epoch.
        mode: how the per-task train loaders combine: "min_size" (the original: stop with the shortest),
            "max_size_cycle" (cycle shorter ones until the longest ends), "max_size" or "sequential".
        eval_mode: the same for validation/test loaders (default "sequential": every row once).
        pad_to_multiple_of / length_buckets: padding of each batch (see `TreeCollator`).
        max_lengths: root -> longest sequence in tokens, overriding the model's.
        truncation: False: a too-long sequence is an error; True: it is truncated (and logged).
        pin_memory: pin each batch (one buffer, see `TreeBatch`) for asynchronous host-to-device copies.
        sharing_strategy: how worker processes send batches (`set_sharing_strategy`); None: torch's default.
        rank / world_size: distributed shard; taken from the attached Trainer when there is one. Use
            `Trainer(use_distributed_sampler=False)`: the samplers shard themselves.
    """

    def __init__(
        self,
        tasks: Sequence[Any] | Mapping[str, Any],
        *,
        model: Any = None,
        tokenizers: Mapping[str, PreTrainedTokenizerBase] | None = None,
        data: Mapping[str, Any] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        mode: str = "min_size",
        eval_mode: str = "sequential",
        pad_to_multiple_of: int | None = 8,
        length_buckets: Sequence[int] | None = None,
        max_lengths: Mapping[str, int] | None = None,
        truncation: bool = False,
        drop_last: bool = False,
        pin_memory: bool = False,
        sharing_strategy: str | None = "file_system",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
        if not self.tasks:
            raise ValueError("TreeDataModule needs at least one task; got none")
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"TreeDataModule: task names must be unique; got {names}")
        for which, value in (("mode", mode), ("eval_mode", eval_mode)):
            if value not in COMBINE_MODES:
                raise ValueError(f"TreeDataModule: {which}={value!r}; expected one of {COMBINE_MODES}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(
                f"TreeDataModule: batch sizes must be positive; got {batch_size}, {eval_batch_size}"
            )
        if (model is None) == (tokenizers is None):
            raise ValueError("TreeDataModule: pass exactly one of model= (or its directory) and tokenizers=")
        if model is not None:
            tokenizers, model_max_lengths = tokenizers_from_model(model)
        else:
            model_max_lengths = {}
        lengths = {**model_max_lengths, **(max_lengths or {})}
        self.encoders = {
            root: RootEncoder(tokenizer, max_length=lengths.get(root), truncation=truncation)
            for root, tokenizer in tokenizers.items()
        }
        data = dict(data or {})
        unknown = set(data) - set(names)
        if unknown:
            raise ValueError(
                f"TreeDataModule: data given for unknown tasks {sorted(unknown)}; tasks: {names}"
            )
        self.data = {}
        for task in self.tasks:
            source = data.get(task.name, task.data)
            if source is None:
                raise ValueError(
                    f"task {task.name!r} has no data; set its `data` or pass data={{{task.name!r}: ...}}"
                )
            self.data[task.name] = source if isinstance(source, TableData) else TableData(source)
        self.collators = {
            task.name: TreeCollator(
                self.encoders, [task], pad_to_multiple_of=pad_to_multiple_of, length_buckets=length_buckets
            )
            for task in self.tasks
        }
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.mode = mode
        self.eval_mode = eval_mode
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        strategies = sorted(torch.multiprocessing.get_all_sharing_strategies())
        if sharing_strategy is not None and sharing_strategy not in strategies:
            raise ValueError(
                f"TreeDataModule: sharing_strategy={sharing_strategy!r}; expected None or one of {strategies}"
            )
        self.sharing_strategy = sharing_strategy
        self.rank = rank
        self.world_size = world_size
        self.frames: dict[str, dict[str, pd.DataFrame]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Loads, splits and checks every task's rows (once)."""
        if self.frames:
            return
        for task in self.tasks:
            frames = self.data[task.name].load()
            checked = {}
            for split in SPLITS:
                frame = task.prepare(frames[split], split=split)
                for root, column in task.inputs.items():
                    self.encoders[root].check_sequences(
                        frame[column], where=f"task {task.name!r} split {split!r} column {column!r}"
                    )
                checked[split] = frame
            if len(checked["train"]) == 0:
                raise ValueError(f"task {task.name!r} has no training rows; expected at least one")
            balance_by = self.data[task.name].balance_by
            if balance_by is not None:
                require_columns(
                    checked["train"],
                    [balance_by] if isinstance(balance_by, str) else list(balance_by),
                    where=f"task {task.name!r} balance_by",
                )
            checked_sizes = {split: len(frame) for split, frame in checked.items()}
            logger.info("task %r rows per split: %s", task.name, checked_sizes)
            self.frames[task.name] = checked

    def _distributed(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return self.rank, self.world_size

    def _columns(self, task: Any) -> list[str]:
        return [*task.inputs.values(), *task.label_columns]

    def train_sampler(self, task_index: int) -> MinorityUpsampler | EpochShuffleSampler:
        """The train sampler of task `task_index`: round-robin minority upsampling over its `balance_by`
        groups, else a seeded per-epoch shuffle."""
        task = self.tasks[task_index]
        frame = self.frames[task.name]["train"]
        rank, world_size = self._distributed()
        seed = self.seed + task_index
        balance_by = self.data[task.name].balance_by
        if balance_by is None:
            return EpochShuffleSampler(len(frame), seed=seed, rank=rank, world_size=world_size)
        keys = (
            frame[balance_by]
            if isinstance(balance_by, str)
            else frame[list(balance_by)].itertuples(index=False)
        )
        groups = group_indices(tuple(k) if not isinstance(balance_by, str) else k for k in keys)
        return MinorityUpsampler(groups, seed=seed, rank=rank, world_size=world_size)

    def task_dataloader(self, task_name: str, split: str) -> DataLoader:
        """The DataLoader of one task and split (train: sampled and balanced; others: in order, sharded)."""
        self.setup()
        index = [task.name for task in self.tasks].index(task_name)
        task = self.tasks[index]
        frame = self.frames[task_name][split]
        dataset = RowDataset(frame, self._columns(task))
        options = {
            "collate_fn": self.collators[task_name],
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.num_workers > 0,
        }
        if self.num_workers > 0 and self.sharing_strategy is not None:
            options["worker_init_fn"] = functools.partial(set_sharing_strategy, self.sharing_strategy)
        if split == "train":
            # Resumable: a mid-epoch checkpoint restores this loader's position (see ResumableDataLoader).
            return ResumableDataLoader(
                dataset,
                sampler=self.train_sampler(index),
                batch_size=self.batch_size,
                drop_last=self.drop_last,
                **options,
            )
        rank, world_size = self._distributed()
        sampler = EpochShuffleSampler(len(frame), shuffle=False, rank=rank, world_size=world_size)
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, sampler=sampler, drop_last=False, **options
        )

    def _combined(self, split: str, mode: str) -> CombinedLoader:
        loaders = {task.name: self.task_dataloader(task.name, split) for task in self.tasks}
        loaders = {name: loader for name, loader in loaders.items() if len(loader.dataset) > 0}
        return CombinedLoader(loaders, mode=mode)

    def train_dataloader(self) -> CombinedLoader:
        """Yields {task name: TreeBatch} per step (in "sequential" mode, one task's batch at a time)."""
        return self._combined("train", self.mode)

    def val_dataloader(self) -> CombinedLoader:
        return self._combined("validation", self.eval_mode)

    def test_dataloader(self) -> CombinedLoader:
        return self._combined("test", self.eval_mode)
