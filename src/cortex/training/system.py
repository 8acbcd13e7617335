"""`NeuralTreeSystem`: the LightningModule that trains a `NeuralTreeModel` on several tasks.

It holds the model (composition: the model never sees tasks, data or the trainer), the tasks (loss and
labels) and one corruption process per corrupted root. Discriminative input corruption (spec 5.6, A10):
during training every task's inputs are corrupted with a per-example noise level drawn from the root's
timestep distribution, and tasks with `label_smoothing: noise_level` smooth their labels by that level; at
evaluation the noise level is 0 for property tasks and 0.5 for masked language models.

Optimisation strategies:
  "joint" (default): one optimizer step on the gradient of sum_k weight_k * loss_k per batch, automatic
      optimisation, so Lightning's gradient clipping, accumulation, mixed precision and DDP apply unchanged.
      `joint_backward` says how that gradient is formed: "sum" runs one backward on the summed loss, so every
      task's activations are alive at once; "sequential" runs each task's backward right after its forward
      (through the strategy, so precision scaling and accumulation apply) and gradients accumulate, so the
      peak holds one task's activations (the same gradient up to float summation order); "auto" (default)
      is sequential on one process and sum under distributed strategies, whose gradient hooks expect one
      backward per step, and under CUDA-graph compile modes (CUDAGRAPH_MODES).
      `step_graph` (CUDA only) captures the joint step's forwards, losses and backward(s) as one CUDA graph and
      replays it (cortex.training.graphs): the host then launches one graph a step instead of every kernel.
  "per_task": the original's (spec 6.3, A8): for each task in order, zero_grad, backward of that task's loss,
      clip, optimizer step; one shared optimizer. The LR scheduler advances once per batch.

Randomness: before every training batch the global torch RNG is reseeded from (seed, batch index, rank), so
corruption and dropout draws are a function of the position in training and a resumed run repeats the
uninterrupted one exactly.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from cortex.data.collate import TreeBatch
from cortex.training.graphs import StepGraph
from cortex.training.metrics import METRICS
from cortex.training.schedules import INTERVALS, warmup_cosine_scheduler

logger = logging.getLogger(__name__)

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
STRATEGIES = ("joint", "per_task")
JOINT_BACKWARDS = ("auto", "sum", "sequential")
# torch.compile modes that replay CUDA graphs: a graph replay overwrites the outputs of the previous replay, and
# with a backward between two task forwards that failed on an H200 (torch 2.11, "accessing tensor output of
# CUDAGraphs that has been overwritten by a subsequent run"), so these modes take the summed backward.
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
STEP_GRAPH_OPTIONS = ("warmup_steps", "max_graphs")
# Lightning precisions that scale the loss with a GradScaler, whose inf check syncs with the host (not capturable).
SCALED_PRECISIONS = ("16-mixed", "16", 16)
# Noise level of each leaf type's inputs at evaluation (spec 5.6: property tasks clean, LM tasks 0.5).
EVAL_NOISE_LEVELS: dict[str, float] = {"regressor": 0.0, "classifier": 0.0, "mlm": 0.5, "causal_lm": 0.0}


@dataclass
class OptimizerConfig:
    """Optimizer and LR schedule. name: "adam" | "adamw"; lr > 0; betas in [0, 1); weight_decay >= 0.
    warmup_steps: int >= 0 (in `interval` units) or a fraction in (0, 1) of the total; interval: "step" (per
    optimizer step) or "epoch" (the original's schedule, spec A7); schedule: "cosine" or "constant"."""

    name: str = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: float = 0.05
    interval: str = "step"
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        where = "optim"
        if self.name not in OPTIMIZERS:
            raise ValueError(f"{where}.name={self.name!r}; expected one of {sorted(OPTIMIZERS)}")
        if not self.lr > 0:
            raise ValueError(f"{where}.lr={self.lr}; expected a learning rate > 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"{where}.betas={list(self.betas)}; expected two values in [0, 1)")
        if not self.eps > 0:
            raise ValueError(f"{where}.eps={self.eps}; expected > 0")
        if self.weight_decay < 0:
            raise ValueError(f"{where}.weight_decay={self.weight_decay}; expected >= 0")
        if self.warmup_steps < 0:
            raise ValueError(
                f"{where}.warmup_steps={self.warmup_steps}; expected >= 0 (steps, or a fraction < 1)"
            )
        if self.interval not in INTERVALS:
            raise ValueError(f"{where}.interval={self.interval!r}; expected one of {INTERVALS}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"{where}.schedule={self.schedule!r}; expected 'cosine' or 'constant'")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


def _update_regression(metric, task, outputs, batch) -> None:
    output = outputs.leaf_outputs[task.leaf]
    metric.update(output.loc, output.scale, batch.labels[task.name])


def _update_classification(metric, task, outputs, batch) -> None:
    metric.update(outputs.leaf_outputs[task.leaf].logits, batch.labels[task.name])


def _update_mlm(metric, task, outputs, batch) -> None:
    root_output = outputs.root_outputs[task.root]
    metric.update(outputs.leaf_outputs[task.leaf].logits, root_output.clean_ids, root_output.is_corrupted)


def _update_causal_lm(metric, task, outputs, batch) -> None:
    inputs = batch.root_inputs[task.root]
    logits = outputs.leaf_outputs[task.leaf].logits[:, :, :-1]  # (E, B, L-1, V): position l predicts l + 1
    metric.update(logits, inputs["input_ids"][:, 1:], inputs["attention_mask"][:, 1:])


COMPILE_OPTIONS = ("backend", "mode", "dynamic", "fullgraph", "options")


def _switch_options(
    name: str, value: bool | Mapping[str, Any], allowed: Sequence[str]
) -> dict[str, Any] | None:
    """A true/false-or-mapping argument (`compile`, `step_graph`) -> keyword arguments (None = off)."""
    if isinstance(value, bool):
        return {} if value else None
    if not isinstance(value, Mapping):
        raise ValueError(f"{name}={value!r}; expected true/false or a mapping of {tuple(allowed)}")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValueError(f"{name} has unknown keys {unknown}; expected some of {tuple(allowed)}")
    return dict(value)


METRIC_UPDATES: dict[str, Callable[..., None]] = {
    "regressor": _update_regression,
    "classifier": _update_classification,
    "mlm": _update_mlm,
    "causal_lm": _update_causal_lm,
}


def seed_generators(seed: int, device: torch.device) -> None:
    """Seeds the CPU generator and `device`'s (the draws of a training step: corruption, timesteps).

    Not `torch.manual_seed`: besides every CUDA device it seeds MTIA and XPU through their lazy-init queues, and
    each such call formats the caller's stack (`traceback.format_stack`) and stays queued while the backend is
    uninitialised: two stack formats a step on the GPU host profile of issue 8, and a queue that grows every step
    on a CPU-only machine."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.default_generators[
            device.index if device.index is not None else torch.cuda.current_device()
        ].manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)


class NeuralTreeSystem(pl.LightningModule):
    """Trains `model` on `tasks`.

    Args:
        model: a `NeuralTreeModel`.
        tasks: the tasks (cortex.tasks), each naming a leaf of `model` and its input roots.
        corruption: root name -> corruption process (cortex.corruption), attached to the model's root.
        optim: `OptimizerConfig` or a mapping of its fields.
        strategy: "joint" or "per_task" (see the module docstring).
        task_weights: task name -> weight of its loss in the joint sum (default 1 each).
        gradient_clip_val: per_task strategy only (Lightning clips joint runs via Trainer(gradient_clip_val)).
        seed: base of the per-batch reseeding.
        compile: compile the model in place (`model.compile()`), so state-dict keys never gain `_orig_mod.`;
            True for torch.compile's defaults (inductor), or a mapping of `torch.compile` arguments among
            COMPILE_OPTIONS, e.g. {"backend": "aot_eager", "dynamic": None}.
        joint_backward: "auto" | "sum" | "sequential" (see the module docstring).
        step_graph: capture each training step's forward, losses and backward as a CUDA graph (`StepGraph`):
            True, or a mapping with `warmup_steps` (eager steps first, default 3) and `max_graphs` (distinct batch
            shapes captured, default 4). strategy "joint" (its `joint_backward` applies inside the graph), one
            CUDA process, no fp16 loss scaling and no CUDA-graph compile mode; the callbacks' backward hooks are
            not called (the backward is inside the graph).

    Batches: a mapping task name -> `TreeBatch` (a CombinedLoader of one loader per task); a task missing
    from a validation batch (exhausted loader) is skipped.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Any],
        corruption: Mapping[str, nn.Module] | None = None,
        optim: OptimizerConfig | Mapping[str, Any] | None = None,
        strategy: str = "joint",
        task_weights: Mapping[str, float] | None = None,
        gradient_clip_val: float | None = None,
        seed: int = 0,
        compile: bool | Mapping[str, Any] = False,
        joint_backward: str = "auto",
        step_graph: bool | Mapping[str, Any] = False,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy={strategy!r}; expected one of {STRATEGIES}")
        if joint_backward not in JOINT_BACKWARDS:
            raise ValueError(f"joint_backward={joint_backward!r}; expected one of {JOINT_BACKWARDS}")
        self.joint_backward = joint_backward
        cudagraphs = (compile if isinstance(compile, Mapping) else {}).get("mode") in CUDAGRAPH_MODES
        if joint_backward == "sequential" and cudagraphs:
            raise ValueError(
                f"joint_backward='sequential' with compile mode {compile['mode']!r} (CUDA graphs): a graph replay "
                "overwrites the previous task's saved activations; use 'sum' or 'auto'"
            )
        self._cudagraphs = cudagraphs
        self.step_graph_options = _switch_options("step_graph", step_graph, STEP_GRAPH_OPTIONS)
        if self.step_graph_options is not None:
            if strategy != "joint":
                raise ValueError(f"step_graph with strategy={strategy!r}; expected strategy 'joint'")
            if cudagraphs:
                raise ValueError(
                    f"step_graph with compile mode {compile['mode']!r}, which replays CUDA graphs of its own; use "
                    "mode 'default' (inductor kernels inside the step graph) or no compile"
                )
        self._step_graph: StepGraph | None = None
        self.model = model
        self.tasks = list(tasks)
        self.optim = optim if isinstance(optim, OptimizerConfig) else OptimizerConfig(**dict(optim or {}))
        self.strategy = strategy
        self.automatic_optimization = strategy == "joint"
        self.gradient_clip_val = gradient_clip_val
        self.seed = int(seed)
        self.compile_options = _switch_options("compile", compile, COMPILE_OPTIONS)
        leaf_types = {name: node["type"] for name, node in model.config.leaves.items()}
        roots = list(model.config.roots)
        names = [task.name for task in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names {names} repeat; expected unique names")
        if not self.tasks:
            raise ValueError("tasks is empty; expected at least one task")
        for task in self.tasks:
            if task.leaf not in leaf_types:
                raise ValueError(
                    f"task {task.name!r} trains leaf {task.leaf!r}; the model's leaves are {sorted(leaf_types)}"
                )
            for root in task.inputs:
                if root not in roots:
                    raise ValueError(f"task {task.name!r} feeds root {root!r}; the model's roots are {roots}")
        weights = dict(task_weights or {})
        for name, weight in weights.items():
            if name not in names:
                raise ValueError(f"task_weights names task {name!r}; expected one of {names}")
            if not weight >= 0:
                raise ValueError(f"task_weights.{name}={weight}; expected a weight >= 0")
        self.task_weights = {name: float(weights.get(name, 1.0)) for name in names}
        self.corruption = nn.ModuleDict(dict(corruption or {}))
        for root in self.corruption:
            if root not in roots:
                raise ValueError(f"corruption is given for root {root!r}; the model's roots are {roots}")
        if len(self.corruption):
            model.attach_corruption(dict(self.corruption))
        self._leaf_types = {task.name: leaf_types[task.leaf] for task in self.tasks}
        self._eval_noise = {name: EVAL_NOISE_LEVELS[kind] for name, kind in self._leaf_types.items()}
        self._metric_updates = {name: METRIC_UPDATES[kind] for name, kind in self._leaf_types.items()}
        self.val_metrics = nn.ModuleDict({name: METRICS[kind]() for name, kind in self._leaf_types.items()})

    # ---- inputs -------------------------------------------------------------------------------------------

    def root_inputs(self, batch: Any, noise_level: float | None) -> dict[str, dict[str, torch.Tensor]]:
        """The model's root inputs for a `TreeBatch`: with noise_level None every corrupted root gets a
        per-example (B,) level sampled from its process (training); otherwise that fixed level."""
        inputs = {}
        for root, root_batch in batch.root_inputs.items():
            root_input = dict(root_batch)
            if root in self.corruption:
                size = root_batch["input_ids"].shape[0]
                if noise_level is None:
                    level = self.corruption[root].sample_noise_level(size, device=self.device)
                else:
                    level = torch.full((size,), noise_level, dtype=torch.float64, device=self.device)
                root_input["noise_level"] = level
            inputs[root] = root_input
        return inputs

    def leaf(self, task: Any) -> nn.Module:
        return self.model.leaves[task.leaf]

    def task_loss(self, task: Any, batch: Any) -> torch.Tensor:
        """Training loss of one task on its `TreeBatch`, with freshly corrupted inputs."""
        outputs = self.model(self.root_inputs(batch, None), leaves=[task.leaf])
        return task.loss(self.leaf(task), outputs, batch)

    # ---- training -----------------------------------------------------------------------------------------

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A `TreeBatch` or a task name -> `TreeBatch` mapping moves with one non-blocking `.to` per tensor;
        Lightning's generic path (recursing into every dataclass field through `apply_to_collection`) cost
        3.6 ms of host time a step on the GPU profile of BENCHMARKS.md (issue 8). Anything else: Lightning's."""
        if isinstance(batch, TreeBatch):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, Mapping) and batch and all(isinstance(b, TreeBatch) for b in batch.values()):
            return {name: b.to(device, non_blocking=True) for name, b in batch.items()}
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _batch_seed(self) -> int:
        index = self.trainer.fit_loop.epoch_loop.batch_progress.total.ready
        return (self.seed * 1_000_003 + index) * 1_009 + self.global_rank

    def on_train_start(self) -> None:
        # Mid-epoch resume: Lightning restores the train loaders' positions (ResumableDataLoader.state_dict)
        # only when it builds them after restoring the checkpoint; configure_optimizers builds them earlier
        # (estimated_stepping_batches), so apply the restored positions now, before the first batch
        # (Lightning-AI/pytorch-lightning#20550). Our loaders iterate lazily, so the iterator Lightning made
        # before the restore still starts at the restored position. A no-op when there is nothing to restore or
        # Lightning already did it (it empties the pending list).
        self.trainer.fit_loop._load_combined_loader_states()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_generators(self._batch_seed() % (2**63), self.device)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        if self.automatic_optimization:
            return self._joint_step(batch, batch_idx)
        return self._per_task_step(batch)

    def _logs_this_step(self) -> bool:
        """Whether the training losses are logged at this batch: on the steps where Lightning writes to the
        loggers (every `Trainer(log_every_n_steps)`, and when the run is stopping) and at an epoch's last batch.
        The loggers receive the same values as with logging every step; the progress bar refreshes its loss
        values on these steps (set log_every_n_steps=1 to see every step's)."""
        trainer = self.trainer
        return trainer._logger_connector.should_update_logs or trainer.is_last_batch

    def _log_losses(
        self,
        losses: dict[str, torch.Tensor],
        batch: Mapping[str, Any],
        total_parts: Sequence[torch.Tensor] = (),
    ) -> None:
        """Logs each task's loss (progress bar too) and the sum of `total_parts` as "train_loss", averaged over
        processes.

        Host cost (issue 8, measured on an H200 with the CUDA sync debug mode): each `self.log` call costs about
        1 ms of host time, and Lightning converts every progress-bar value to a Python number at every batch,
        logged at that batch or not; a value on the GPU makes that a device synchronisation, which stops the host
        from queueing the next step while the GPU runs this one. So the values are logged only on logging steps,
        averaged over processes in one collective, and copied to the host once (one synchronisation per logging
        step); Lightning's per-batch conversions then read host memory."""
        if not self._logs_this_step():
            return
        # (key, value, on the progress bar, batch size)
        entries = [
            (f"{name}/train_loss", loss, True, batch[name].batch_size) for name, loss in losses.items()
        ]
        if total_parts:
            total = torch.stack([part.detach().float() for part in total_parts]).sum()
            entries.append(("train_loss", total, False, batch[self.tasks[0].name].batch_size))
        values = torch.stack([value.detach().float() for _, value, _, _ in entries])
        values = self.trainer.strategy.reduce(values, reduce_op="mean").cpu()  # (len(entries),)
        for (key, _, prog_bar, batch_size), value in zip(entries, values):
            self.log(key, value, prog_bar=prog_bar, batch_size=batch_size)

    def _sequential_backward(self) -> bool:
        # Under a step graph too: its one graph holds every task's backward, with no graph replay in between.
        if self.joint_backward == "auto":
            return self.trainer.world_size == 1 and not self._cudagraphs
        if self.joint_backward == "sequential" and self.trainer.world_size > 1:
            raise ValueError(
                f"joint_backward='sequential' with {self.trainer.world_size} processes; distributed gradient "
                "hooks expect one backward per step: use 'sum' or 'auto'"
            )
        return self.joint_backward == "sequential"

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        # Lightning's automatic loop zeroes gradients after training_step, before the returned loss's backward:
        # that would drop the gradients a sequential step already accumulated, so that step zeroes them itself.
        # A step graph zeroes them itself, in place (their addresses are the graph's outputs).
        if self.automatic_optimization and (self._step_graph is not None or self._sequential_backward()):
            return
        optimizer.zero_grad()

    def weighted_task_loss(self, task: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(task's training loss on its batch, its weight x that loss in float32)."""
        loss = self.task_loss(task, batch[task.name])
        return loss, self.task_weights[task.name] * loss.float()

    def summed_losses(self, batch: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every task's training loss on its batch, and their weighted sum (float32)."""
        parts = {task.name: self.weighted_task_loss(task, batch) for task in self.tasks}
        total = torch.stack([weighted for _, weighted in parts.values()]).sum()
        return {name: loss for name, (loss, _) in parts.items()}, total

    def on_fit_start(self) -> None:
        if self.step_graph_options is None:
            return
        trainer = self.trainer
        if self.device.type != "cuda":
            raise ValueError(f"step_graph needs a CUDA device; this run trains on {self.device}")
        if trainer.world_size > 1:
            raise ValueError(
                f"step_graph with {trainer.world_size} processes; DDP's gradient hooks are not captured: expected one"
            )
        if trainer.precision in SCALED_PRECISIONS:
            raise ValueError(
                f"step_graph with precision {trainer.precision!r} (loss scaling syncs with the host); use "
                "'bf16-mixed', '32-true' or '16-true'"
            )
        self._step_graph = StepGraph(
            {task.name: functools.partial(self.weighted_task_loss, task) for task in self.tasks},
            dict(self.model.named_parameters()),
            sequential=self._sequential_backward(),
            **self.step_graph_options,
        )
        # The graphed training_step returns None (its backward ran inside the graph): Lightning then runs no
        # backward of its own, and warns once that the step returned None.
        warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")

    def _graphed_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        accumulate = self.trainer.accumulate_grad_batches
        # Zeroed where Lightning would zero them (its zero_grad hook is a no-op under a step graph).
        if batch_idx % accumulate == 0:
            self._step_graph.zero_grads()
        losses, total = self._step_graph(batch, scale=1.0 / accumulate)
        self._log_losses(losses, batch, [total])
        return None

    def _joint_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        if self._step_graph is not None:
            return self._graphed_step(batch, batch_idx)
        if not self._sequential_backward():
            losses, total = self.summed_losses(batch)
            parts = [total]
        else:
            # Every task but the last: backward now, through the strategy (precision scaling, hooks), scaled as
            # Lightning scales the returned loss under gradient accumulation; the last is returned as usual.
            if batch_idx % self.trainer.accumulate_grad_batches == 0:  # where Lightning would zero them
                self.optimizers().zero_grad()
            losses, done = {}, []
            for task in self.tasks[:-1]:
                loss = self.task_loss(task, batch[task.name])
                weighted = self.task_weights[task.name] * loss.float()
                self.trainer.strategy.backward(weighted / self.trainer.accumulate_grad_batches, None)
                losses[task.name], done = loss.detach(), [*done, weighted.detach()]
            last = self.tasks[-1]
            losses[last.name] = self.task_loss(last, batch[last.name])
            total = self.task_weights[last.name] * losses[last.name].float()
            parts = [*done, total]
        self._log_losses(losses, batch, parts)
        return total

    def _per_task_step(self, batch: Mapping[str, Any]) -> torch.Tensor:
        optimizer = self.optimizers()
        losses = {}
        for task in self.tasks:
            loss = self.task_weights[task.name] * self.task_loss(task, batch[task.name])
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            if self.gradient_clip_val is not None:
                self.clip_gradients(
                    optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
                )
            optimizer.step()
            losses[task.name] = loss.detach()
        scheduler = self.lr_schedulers()
        if self.optim.interval == "step" or self.trainer.is_last_batch:
            scheduler.step()
        self._log_losses(losses, batch)
        return torch.stack(list(losses.values())).sum()

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Lightning moves the model to its device before this hook: with every parameter a floating CUDA
        # tensor, the fused kernel updates them all in one launch (foreach, torch's CUDA default, launches
        # several per parameter group chunk; issue 8 profiled ~30 ms of launches a small GPU step).
        # Not with Lightning's mixed-precision plugins and gradient clipping: they refuse to clip for an optimizer
        # that unscales gradients itself, as fused ones declare (bf16-mixed included, which has no scaler).
        clipped = self._trainer is not None and bool(self.trainer.gradient_clip_val)
        mixed = self._trainer is not None and str(self.trainer.precision).endswith("-mixed")
        fused = (
            bool(params)
            and all(p.is_cuda and p.is_floating_point() for p in params)
            and not (clipped and mixed)
        )
        optimizer = OPTIMIZERS[self.optim.name](
            params,
            lr=self.optim.lr,
            betas=self.optim.betas,
            eps=self.optim.eps,
            weight_decay=self.optim.weight_decay,
            **({"fused": True} if fused else {}),
        )
        if self.optim.interval == "step":
            total = int(self.trainer.estimated_stepping_batches)
        else:
            total = int(self.trainer.max_epochs)
        if total < 1:
            raise ValueError(f"training would take {total} {self.optim.interval}s; expected at least one")
        warmup = self.optim.warmup_steps
        warmup = round(warmup * total) if warmup < 1 else int(warmup)
        if self.optim.schedule == "cosine":
            scheduler = warmup_cosine_scheduler(optimizer, min(warmup, total), total)
        else:
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.optim.interval},
        }

    def setup(self, stage: str) -> None:
        """Fits task state on the training split (target standardisation, written into leaf buffers) from the
        attached data module's `frames`, then compiles the model if asked. A resumed run then loads the
        checkpoint's buffers over the (identically) fitted ones."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if stage == "fit" and datamodule is not None:
            datamodule.setup("fit")
            self.fit_tasks({name: frames["train"] for name, frames in datamodule.frames.items()})
        if self.compile_options is not None:
            self.model.compile(**self.compile_options)

    def fit_tasks(self, train_frames: Mapping[str, Any]) -> None:
        """Calls `task.fit(leaf, train_frame)` for every task (regression: target standardisation)."""
        for task in self.tasks:
            if task.name not in train_frames:
                raise ValueError(f"no training rows for task {task.name!r}; got {sorted(train_frames)}")
            task.fit(self.leaf(task), train_frames[task.name])

    # ---- validation ---------------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        # Names of the validation loaders in order: in "sequential" mode dataloader_idx indexes them.
        loaders = self.trainer.val_dataloaders
        self._val_names = list(loaders) if isinstance(loaders, Mapping) else [self.tasks[0].name]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # "sequential" eval mode yields one task's TreeBatch at a time; the other modes a dict per step.
        batches = batch if isinstance(batch, Mapping) else {self._val_names[dataloader_idx]: batch}
        for task in self.tasks:
            task_batch = batches.get(task.name)
            if task_batch is None:
                continue
            outputs = self.model(
                self.root_inputs(task_batch, self._eval_noise[task.name]), leaves=[task.leaf]
            )
            loss = task.loss(self.leaf(task), outputs, task_batch)
            self.log(
                f"{task.name}/val_loss",
                loss,
                sync_dist=True,
                batch_size=task_batch.batch_size,
                add_dataloader_idx=False,
            )
            self._metric_updates[task.name](self.val_metrics[task.name], task, outputs, task_batch)

    def on_validation_epoch_end(self) -> None:
        for name, metric in self.val_metrics.items():
            if metric.update_count == 0:
                continue
            values = metric.compute()
            self.log_dict(
                {f"{name}/val_{key}": value.float() for key, value in values.items()},
                sync_dist=True,
                add_dataloader_idx=False,
            )
            metric.reset()
