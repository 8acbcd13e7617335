"""`transformers.Trainer` integration: rows -> model kwargs with labels, so `NeuralTreeModel.forward` returns
`loss` and a plain `Trainer` fine-tunes a tree on one or several tasks.

The loss is the tree's own (`NeuralTreeModel.forward(..., labels=...)` -> each leaf's `tree_loss` -> the leaf's
`loss`), the same leaf code the Lightning path (`cortex.training.NeuralTreeSystem`) calls through the tasks.
Differences from the Lightning path (see docs/ecosystem.md):
  - one dataset and one loader: a multi-task batch holds rows of every task, labels missing for a task are
    NaN / -100 and left out of that task's loss (Lightning combines one loader per task);
  - tasks are summed with weight 1, one optimizer step per batch ("joint"; no "per_task" strategy);
  - no discriminative corruption unless `NeuralTreeTrainer(corruption=...)` is used, and no label smoothing
    by noise level (the tree's loss has none);
  - target standardisation is fitted by `fit_tasks` (Lightning: in `NeuralTreeSystem.setup`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from torch import nn
from transformers import Trainer

from cortex.data.collate import RootEncoder, TreeCollator


def root_encoders(model: Any, truncation: bool = False) -> dict[str, RootEncoder]:
    """root name -> `RootEncoder` with the model's tokenizer and the root's max_length."""
    encoders = {}
    for root, tokenizer in model.tokenizers.items():
        if tokenizer is None:
            raise ValueError(f"root {root!r} has no tokenizer; set tokenizer_path in its config")
        encoders[root] = RootEncoder(tokenizer, model.roots[root].max_length, truncation)
    return encoders


class TreeTrainerCollator:
    """Rows (mappings column -> value) -> `{"root_inputs": {root: {input_ids, attention_mask}}, "labels":
    {leaf: tensor}}`, the keyword arguments of `NeuralTreeModel.forward` that make it return `loss`.

    Labels are keyed by each task's leaf: regression (B, T) float32 with NaN = missing, classification (B,)
    int64 with -100 = missing; LM tasks add their leaf with no labels (None: the root's clean ids are the
    targets). Use with `TrainingArguments(remove_unused_columns=False)`: the collator needs the raw columns.

    Args:
        model: the `NeuralTreeModel` (its tokenizers and root max lengths).
        tasks: the tasks trained (cortex.tasks); two tasks may not train the same leaf.
        pad_to_multiple_of, length_buckets: padding (see `TreeCollator`).
        truncation: False: a too-long sequence is an error; True: truncated to the root's max_length.
    """

    def __init__(
        self,
        model: Any,
        tasks: Sequence[Any],
        *,
        pad_to_multiple_of: int | None = 8,
        length_buckets: Sequence[int] | None = None,
        truncation: bool = False,
    ) -> None:
        self.tasks = list(tasks)
        if not self.tasks:
            raise ValueError("TreeTrainerCollator needs at least one task; got none")
        leaves = [task.leaf for task in self.tasks]
        if len(set(leaves)) != len(leaves):
            raise ValueError(f"tasks train leaves {leaves}; expected each leaf trained by one task")
        unknown = [leaf for leaf in leaves if leaf not in model.leaves]
        if unknown:
            raise ValueError(
                f"tasks train unknown leaves {unknown}; the model's leaves are {list(model.leaves)}"
            )
        self.collator = TreeCollator(
            root_encoders(model, truncation),
            self.tasks,
            pad_to_multiple_of=pad_to_multiple_of,
            length_buckets=length_buckets,
        )
        self.columns = sorted(
            {c for task in self.tasks for c in (*task.inputs.values(), *task.label_columns)}
        )

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        missing = [c for c in self.columns if c not in rows[0]]
        if missing:
            raise ValueError(
                f"rows lack columns {missing} (they have {sorted(rows[0])}); expected {self.columns}. With "
                "transformers.Trainer set TrainingArguments(remove_unused_columns=False)"
            )
        batch = self.collator(rows)
        labels = {task.leaf: batch.labels.get(task.name) for task in self.tasks}
        return {"root_inputs": batch.root_inputs, "labels": labels}


def tree_rows(frame: pd.DataFrame, tasks: Sequence[Any], *, split: str = "train") -> pd.DataFrame:
    """Rows of `frame` checked and cleaned for every task (labels numeric, classes as ids, -100 / NaN =
    missing), keeping rows labelled for at least one task: the single multi-task table a Trainer iterates."""
    labelled = pd.Series(False, index=frame.index)
    for task in tasks:
        prepared_where = f"task {task.name!r} split {split!r}"
        frame = task.clean_labels(frame, where=prepared_where)
        labelled |= task.is_labelled(frame)
    if not labelled.any():
        raise ValueError(
            f"split {split!r}: none of its {len(frame)} rows is labelled for tasks {[t.name for t in tasks]}"
        )
    columns = list(dict.fromkeys(c for t in tasks for c in (*t.inputs.values(), *t.label_columns)))
    return frame.loc[labelled, columns].reset_index(drop=True)


def tree_dataset(frame: pd.DataFrame, tasks: Sequence[Any], *, split: str = "train"):
    """`datasets.Dataset` of `tree_rows(frame, tasks)`, ready for `Trainer(train_dataset=...)`."""
    from datasets import Dataset

    return Dataset.from_pandas(tree_rows(frame, tasks, split=split), preserve_index=False)


def fit_tasks(model: Any, tasks: Sequence[Any], train_frame: pd.DataFrame) -> None:
    """Fits task state (regression target standardisation) on the training rows, as the Lightning path does."""
    for task in tasks:
        task.fit(model.leaves[task.leaf], task.prepare(train_frame, split="train"))


class NeuralTreeTrainer(Trainer):
    """`transformers.Trainer` that, in training only, corrupts the inputs of the roots in `corruption`
    with per-example noise levels sampled from each process (the Lightning path's discriminative corruption,
    without label smoothing). Evaluation runs on clean inputs. Forces `remove_unused_columns=False`.

    Args:
        corruption: root name -> corruption process (cortex.corruption), attached to the model's roots.
        (other arguments: those of `transformers.Trainer`.)
    """

    def __init__(self, *args: Any, corruption: Mapping[str, nn.Module] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.args.remove_unused_columns = False
        self.corruption = dict(corruption or {})
        if self.corruption:
            self.model.attach_corruption(self.corruption)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and self.corruption:
            root_inputs = {root: dict(values) for root, values in inputs["root_inputs"].items()}
            for root, process in self.corruption.items():
                batch = root_inputs[root]["input_ids"].shape[0]
                device = root_inputs[root]["input_ids"].device
                root_inputs[root]["noise_level"] = process.sample_noise_level(batch, device=device)
            inputs = {**inputs, "root_inputs": root_inputs}
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


__all__ = [
    "NeuralTreeTrainer",
    "TreeTrainerCollator",
    "fit_tasks",
    "root_encoders",
    "tree_dataset",
    "tree_rows",
]
