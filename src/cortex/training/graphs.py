"""`StepGraph`: a training step's forward, losses and backward captured once as a CUDA graph and replayed.

Why (issue 8): on a small tree (the tutorial tree at width 128, batch 128) a step is ~2 ms of kernels and, even
with torch.compile's CUDA graphs (`mode: reduce-overhead`, one graph per task forward and one per backward), over
10 ms of host time: the GPU idled 80 % of the time. Capturing the whole step body (corruption draws, every task's
forward and loss, the weighted sum and its backward) as one graph leaves one input copy and one graph launch a
step; the optimizer step, gradient clipping, schedulers, logging and callbacks stay Lightning's (eager, outside
the graph), so a run behaves as an uncaptured joint-sum step does.

Mechanics (torch.cuda.graph, "whole network capture"):
  - the first `warmup_steps` steps run eagerly on a side stream (lazy initialisations, torch.compile's
    compilation, gradient tensors), each a real training step; every capture runs on that same stream. The
    autograd engine records, for a parameter's gradient accumulator, the stream it was made on; a gradient made
    on another stream is marked as used by both (`record_stream`), and a capture defers the free of such a
    tensor until the capture ends, so memory the eager step reuses would stay taken inside the graph (PyTorch's
    CUDA graph notes, "Initialize AccumulateGrad on the same stream as capture");
  - then a graph is captured for the batch's signature (every tensor's shape and dtype). Its inputs are static
    copies of the batch; every replay copies the new batch into them (one foreach copy) and launches the graph.
    Gradients accumulate into the parameters' existing `.grad` tensors (fixed addresses), so gradient
    accumulation works: the caller zeroes them at an accumulation window's first step (`zero_grads`);
  - a batch with another signature first runs once eagerly on the side stream (torch.compile compiles code for
    its shapes there: compiling inside a capture fails, since the compiler reads tensor values on the host), and
    gets its own graph the next time that signature comes (up to `max_graphs`, all in one memory pool; pad to
    fixed lengths with `TreeDataModule(length_buckets=...)` to keep the number small); beyond `max_graphs` it
    runs eagerly with the same math;
  - random draws inside the graph (noise levels, masks, dropout) come from the device's default generator, which
    the graph reads at every replay: reseeding it before a step (the system's per-batch seeding) makes the
    replayed draws a function of the seed, as eager draws are.

Requirements (checked by the system with a message): a CUDA device, one process (DDP's gradient hooks are not
captured), no fp16 loss scaling (bf16 autocast is fine), no torch.compile mode that itself replays CUDA graphs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)

# One task's part of a step: batch -> (its loss, its weighted float32 loss, whose gradient the step accumulates).
TaskLoss = Callable[[Mapping[str, Any]], tuple[torch.Tensor, torch.Tensor]]


def _tensors(batch: Mapping[str, Any]) -> list[torch.Tensor]:
    """Every tensor of a task name -> TreeBatch mapping, in task order then packing order."""
    return [tensor for task_batch in batch.values() for tensor in task_batch._tensors()]


def batch_signature(batch: Mapping[str, Any]) -> tuple:
    """(task, ((shape, dtype), ...)) per task: batches with equal signatures replay the same graph."""
    return tuple(
        (name, tuple((tuple(t.shape), t.dtype) for t in task_batch._tensors()))
        for name, task_batch in batch.items()
    )


class _Captured:
    """One captured graph: its static input batch and static outputs."""

    def __init__(
        self,
        graph: torch.cuda.CUDAGraph,
        batch: Mapping[str, Any],
        losses: dict,
        total: torch.Tensor,
        grads: list[tuple[str, torch.nn.Parameter, torch.Tensor]],
    ):
        self.graph = graph
        self.batch = batch
        self.inputs = _tensors(batch)
        self.losses = losses
        self.total = total
        # (name, parameter, its .grad at capture): the graph writes these tensors; holding them keeps their memory
        # from being reused if a parameter's .grad is replaced, which `check_grads` reports.
        self.grads = grads
        # The memory the graph reads and writes: each parameter's and each gradient's address at capture.
        self.addresses = [(parameter.data_ptr(), grad.data_ptr()) for _, parameter, grad in grads]

    def check_grads(self) -> None:
        """Raises if a parameter or its .grad no longer lives where the graph reads and writes it."""
        for (name, parameter, grad), (parameter_at, grad_at) in zip(self.grads, self.addresses):
            if parameter.grad is not grad or grad.data_ptr() != grad_at:
                raise RuntimeError(
                    f"step_graph: parameter {name!r} has another .grad tensor than when its graph was captured "
                    "(replaced or moved, not set to None); the graph writes the captured tensor: zero gradients "
                    "in place (StepGraph.zero_grads) or set them to None while a step graph trains"
                )
            if parameter.data_ptr() != parameter_at:
                raise RuntimeError(
                    f"step_graph: parameter {name!r} no longer lives where its graph was captured (moved to "
                    "another device or reallocated, e.g. by .to() or .cpu()); the graph reads the captured "
                    "memory: update parameters in place (optimizer steps, load_state_dict) while a step graph "
                    "trains, or make a new StepGraph"
                )


class StepGraph:
    """Runs the forward and backward of training batches, replaying a CUDA graph per batch signature after warm-up.

    Args:
        task_losses: task name -> batch -> (loss, weighted loss); the step's gradient is that of the weighted sum.
            Pure tensor code with no host synchronisation.
        parameters: name -> trained parameter (their `.grad` tensors are the graph's gradient outputs), e.g.
            `dict(model.named_parameters())`.
        sequential: each task's backward right after its forward (the peak holds one task's activations, inside
            the graph too), else one backward of the sum.
        warmup_steps: eager steps before the first capture (>= 1: gradients and compiled code must exist).
        max_graphs: most graphs captured; batches of further signatures run eagerly.

    Call with a task name -> TreeBatch mapping on the device; returns (task name -> detached loss, detached
    weighted sum). The returned tensors of a replay are the graph's outputs: read them before the next call.
    """

    def __init__(
        self,
        task_losses: Mapping[str, TaskLoss],
        parameters: Mapping[str, torch.nn.Parameter],
        sequential: bool = True,
        warmup_steps: int = 3,
        max_graphs: int = 4,
    ) -> None:
        if not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"step_graph.warmup_steps={warmup_steps!r}; expected an integer >= 1")
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"step_graph.max_graphs={max_graphs!r}; expected an integer >= 1")
        if not task_losses:
            raise ValueError("step_graph: no task losses; expected at least one task")
        self.task_losses = dict(task_losses)
        trained = {name: p for name, p in parameters.items() if p.requires_grad}
        self.names, self.parameters = list(trained), list(trained.values())
        if not self.parameters:
            raise ValueError("step_graph: no parameter requires a gradient; expected a model to train")
        self.sequential = sequential
        self.warmup_steps = warmup_steps
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, _Captured] = {}
        self._warmed: set[tuple] = set()  # signatures run eagerly at least once (their code compiled)
        # (parameter, its .grad at the first capture): every graph accumulates into these tensors, so a .grad set
        # to None meanwhile (Lightning's zero_grad(set_to_none=True) before validation) is bound to it again
        self._owned: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self.eager_steps = 0  # steps run without a graph (warm-up included)
        self.replays = 0
        self._pool = None
        self._stream = None  # the warm-ups' and captures' stream (CUDA), made at the first warm-up
        self._warned_overflow = False

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.parameters if p.grad is not None]

    def _rebind_grads(self) -> None:
        # A .grad set to None since the first capture gets the captured tensor back, zeroed: what an eager backward
        # into a None .grad starts from.
        for parameter, grad in self._owned:
            if parameter.grad is None:
                parameter.grad = grad.zero_()

    def zero_grads(self) -> None:
        """Zeroes the existing gradient tensors in place (their addresses are the graphs' outputs); a .grad set to
        None is bound again, zeroed, by the next step."""
        grads = self._grads()
        if grads:
            torch._foreach_zero_(grads)

    def _run_body(
        self, batch: Mapping[str, Any], scale: float
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        device = self.parameters[0].device.type
        autocast = torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else None

        # Under the caller's autocast (Lightning's precision context): forwards again without autocast's cast
        # cache, whose casts made before a capture would be read as constants by every replay (torch.cuda.graph's
        # documentation), and backwards outside autocast, as Lightning's own backward is.
        def forward() -> contextlib.AbstractContextManager:
            if not autocast:
                return contextlib.nullcontext()
            return torch.autocast(device, dtype=dtype, cache_enabled=False)

        def backward() -> contextlib.AbstractContextManager:
            return torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext()

        losses, weighted = {}, []
        if self.sequential:
            for name, task_loss in self.task_losses.items():
                with forward():
                    loss, part = task_loss(batch)
                with backward():
                    (part * scale).backward()
                losses[name], weighted = loss.detach(), [*weighted, part.detach()]
            return losses, torch.stack(weighted).sum()
        with forward():
            parts = {name: task_loss(batch) for name, task_loss in self.task_losses.items()}
            total = torch.stack([part for _, part in parts.values()]).sum()
        with backward():
            (total * scale).backward()
        return {name: loss.detach() for name, (loss, _) in parts.items()}, total.detach()

    def __call__(
        self, batch: Mapping[str, Any], *, scale: float = 1.0
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One step's forward and backward (gradients accumulate into `.grad`, scaled by `scale`)."""
        self._rebind_grads()
        signature = (batch_signature(batch), scale)
        captured = self.graphs.get(signature)
        if captured is None:
            if self.eager_steps < self.warmup_steps or signature not in self._warmed:
                self._warmed.add(signature)
                return self._warmup(batch, scale)
            if len(self.graphs) >= self.max_graphs:
                if not self._warned_overflow:
                    logger.warning(
                        "step_graph: a batch of a new shape after %d captured graphs runs eagerly (this and "
                        "every further new shape); pad batches to fixed lengths (TreeDataModule(length_buckets="
                        "...)) or raise step_graph.max_graphs",
                        len(self.graphs),
                    )
                    self._warned_overflow = True
                self.eager_steps += 1
                return self._run_body(batch, scale)
            captured = self._capture(batch, signature, scale)
        captured.check_grads()
        torch._foreach_copy_(captured.inputs, _tensors(batch))
        captured.graph.replay()
        self.replays += 1
        return captured.losses, captured.total

    def _warmup(self, batch: Mapping[str, Any], scale: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # On CUDA on a side stream, as torch.cuda.make_graphed_callables warms up: the lazily created state
        # (cuBLAS workspaces, autograd's per-device streams, compiled code) is then the state the capture sees.
        self.eager_steps += 1
        if self.parameters[0].device.type != "cuda":
            return self._run_body(batch, scale)
        torch.cuda.synchronize()
        with torch.cuda.stream(self._side_stream()):
            losses, total = self._run_body(batch, scale)
        torch.cuda.synchronize()
        return losses, total

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.parameters[0].device)
        return self._stream

    def _capture(self, batch: Mapping[str, Any], signature: tuple, scale: float) -> _Captured:
        if all(p.grad is None for p in self.parameters):
            raise ValueError(
                "step_graph: no parameter has a gradient after the warm-up steps; expected the step's backward to "
                "reach the trained parameters"
            )
        # Parameters that got no gradient in the warm-up keep none: the graph never writes one, and the optimizer
        # skips them as it does in an eager step.
        static = {name: task_batch._apply(torch.clone) for name, task_batch in batch.items()}
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        # Capturing advances the device generator by the graph's draws without drawing; the replay of this same
        # step must start where an eager step would, so its state is put back (a resumed run captures at another
        # step and must draw what the uninterrupted run drew).
        generator = torch.cuda.default_generators[self.parameters[0].device.index or 0]
        rng_state = generator.get_state()
        # thread_local: DataLoader's pin-memory thread keeps allocating pinned host memory during the capture.
        with torch.cuda.graph(
            graph, pool=self._pool, stream=self._side_stream(), capture_error_mode="thread_local"
        ):
            losses, total = self._run_body(static, scale)
        torch.cuda.synchronize()
        generator.set_state(rng_state)
        grads = [(name, p, p.grad) for name, p in zip(self.names, self.parameters) if p.grad is not None]
        if not self._owned:
            self._owned = [(p, grad) for _, p, grad in grads]
        captured = _Captured(graph, static, losses, total, grads)
        self.graphs[signature] = captured
        logger.info("step_graph: captured graph %d for batch shapes %s", len(self.graphs), signature)
        return captured
