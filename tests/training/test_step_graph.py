"""`step_graph`: a training step's forward, losses and backward captured as a CUDA graph (cortex.training.graphs).

On CPU: the argument checks, the refusal to run without CUDA, and the step body's gradients (the eager path a
graph captures). With CUDA (the GPU machine: `python3 -m pytest tests/training/test_step_graph.py`): captured
training ends with the weights of uncaptured training, with random corruption and dropout replayed from the
reseeded generator, gradient accumulation, a second batch shape and bf16 autocast.
"""

from __future__ import annotations

import functools
import re

import lightning.pytorch as pl
import pytest
import torch
from helpers import quiet_trainer, tiny_setup

from cortex.training import NeuralTreeSystem
from cortex.training.graphs import StepGraph, _Captured, batch_signature

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_graph": True, "strategy": "per_task"}, "strategy 'joint'"),
        ({"step_graph": True, "compile": {"mode": "reduce-overhead"}}, "reduce-overhead"),
        ({"step_graph": {"warmup": 3}}, r"unknown keys \['warmup'\]"),
        ({"step_graph": "yes"}, "step_graph='yes'"),
    ],
)
def test_bad_step_graph_arguments_fail_naming_the_value(kwargs, match):
    model, tasks, corruption, _ = tiny_setup()
    with pytest.raises(ValueError, match=match):
        NeuralTreeSystem(model, tasks, corruption, **kwargs)


def test_step_graph_options_are_checked():
    weight = torch.nn.Parameter(torch.ones(2))
    task_losses = {"t": lambda batch: (weight.sum(), weight.sum())}
    with pytest.raises(ValueError, match="warmup_steps=0"):
        StepGraph(task_losses, {"w": weight}, warmup_steps=0)
    with pytest.raises(ValueError, match="max_graphs=-1"):
        StepGraph(task_losses, {"w": weight}, max_graphs=-1)
    with pytest.raises(ValueError, match="no task losses"):
        StepGraph({}, {"w": weight})
    with pytest.raises(ValueError, match="no parameter requires a gradient"):
        StepGraph(task_losses, {"w": torch.nn.Parameter(torch.ones(1), requires_grad=False)})


def test_step_graph_refuses_a_cpu_run_before_training(tmp_path):
    model, tasks, corruption, datamodule = tiny_setup()
    system = NeuralTreeSystem(model, tasks, corruption, step_graph=True)
    before = {k: v.clone() for k, v in model.named_parameters()}
    trainer = quiet_trainer(tmp_path, [], max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(ValueError, match="step_graph needs a CUDA device; this run trains on cpu"):
        trainer.fit(system, datamodule=datamodule)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())  # no step was taken


@pytest.mark.parametrize("sequential", [True, False])
def test_step_body_gives_the_scaled_summed_gradient_and_accumulates_in_place(sequential):
    """The eager path of StepGraph (warm-up; the body a graph captures) on CPU: the gradient of
    scale * sum_k weight_k loss_k, per-task backwards or one of the sum, accumulated into the same .grad tensors,
    zeroed in place."""
    model, tasks, corruption, datamodule = tiny_setup()
    system = NeuralTreeSystem(model, tasks, corruption, task_weights={"bind": 2.0})
    datamodule.setup("fit")
    batch, _, _ = next(iter(datamodule.train_dataloader()))
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())

    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    expected_losses, expected_total = system.summed_losses(batch)
    (expected_total * 0.5).backward()
    expected = [p.grad.clone() for p in params]

    model.zero_grad(set_to_none=True)
    task_losses = {task.name: functools.partial(system.weighted_task_loss, task) for task in tasks}
    step = StepGraph(task_losses, named, sequential=sequential, warmup_steps=100)
    torch.manual_seed(3)
    losses, total = step(batch, scale=0.5)
    assert set(losses) == {"bind", "expr"} and not total.requires_grad
    torch.testing.assert_close(total, expected_total.detach())
    torch.testing.assert_close(total, (2 * losses["bind"] + losses["expr"]).float())
    for name, loss in expected_losses.items():
        torch.testing.assert_close(losses[name], loss.detach())
    addresses = [p.grad.data_ptr() for p in params]
    for got, want in zip([p.grad for p in params], expected):
        torch.testing.assert_close(got, want)
    torch.manual_seed(3)
    step(batch, scale=0.5)  # accumulates: twice the gradient, same tensors
    for got, want in zip([p.grad for p in params], expected):
        torch.testing.assert_close(got, 2 * want)
    step.zero_grads()
    assert [p.grad.data_ptr() for p in params] == addresses and all(not p.grad.any() for p in params)
    assert step.eager_steps == 2 and step.replays == 0 and not step.graphs
    assert batch_signature(batch) == batch_signature({n: b._apply(torch.clone) for n, b in batch.items()})


def test_a_gradient_replaced_after_capture_is_reported():
    """The guard every replay runs (the capture itself needs CUDA: see the CUDA tests below)."""
    weight = torch.nn.Parameter(torch.ones(3))
    weight.grad = torch.zeros(3)
    captured = _Captured(None, {}, {}, torch.zeros(()), [("root.weight", weight, weight.grad)])
    weight.grad.add_(1.0)  # in place: still the captured tensor
    captured.check_grads()
    weight.grad = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"parameter 'root\.weight' has another \.grad"):
        captured.check_grads()


# ---- CUDA ------------------------------------------------------------------------------------------------------


def _gpu_fit(
    tmp_path, step_graph, *, dropout=0.1, precision="32-true", accumulate=1, drop_last=True, batches=8,
    joint_backward="sum", compile=False, val_batches=0,
):  # fmt: skip
    torch.manual_seed(0)
    model, tasks, corruption, _ = tiny_setup(num_rows=160, dropout=dropout)
    from cortex.data.datamodule import TreeDataModule

    datamodule = TreeDataModule(
        tasks, model=model, batch_size=16, seed=0, eval_batch_size=64, drop_last=drop_last
    )
    system = NeuralTreeSystem(
        model, tasks, corruption, joint_backward=joint_backward, step_graph=step_graph, compile=compile,
        optim={"lr": 3e-3, "warmup_steps": 2},
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator="gpu", devices=1, max_epochs=2, limit_train_batches=batches, limit_val_batches=val_batches,
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, use_distributed_sampler=False, precision=precision,
        accumulate_grad_batches=accumulate, gradient_clip_val=1.0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(system, datamodule=datamodule)
    system.batches_trained = trainer.fit_loop.epoch_loop.batch_progress.total.completed
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, system


@cuda
@pytest.mark.parametrize(("accumulate", "joint_backward"), [(1, "auto"), (2, "auto"), (1, "sum")])
def test_captured_training_ends_with_the_weights_of_uncaptured_training(tmp_path, accumulate, joint_backward):
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    kwargs = {"accumulate": accumulate, "joint_backward": joint_backward}
    eager, _ = _gpu_fit(tmp_path / "eager", False, **kwargs)
    graphed, system = _gpu_fit(tmp_path / "graph", {"warmup_steps": 2}, **kwargs)
    step = system._step_graph
    assert step.sequential == (joint_backward == "auto")
    assert len(step.graphs) == 1 and step.eager_steps == 2 and step.replays == system.batches_trained - 2 > 8
    for key, value in eager.items():
        torch.testing.assert_close(graphed[key], value, rtol=1e-4, atol=1e-5, msg=key)
    # the training moved the weights (the comparison is not between two untouched models)
    torch.manual_seed(0)
    initial = tiny_setup(num_rows=160, dropout=0.1)[0].state_dict()
    assert any(not torch.allclose(initial[k], eager[k]) for k in eager if eager[k].is_floating_point())


@cuda
def test_a_new_batch_shape_gets_a_graph_and_beyond_max_graphs_runs_eagerly(tmp_path):
    # 120 training rows, batch 16: the last batch of an epoch has 8 rows, a second shape
    eager, _ = _gpu_fit(tmp_path / "eager", False, drop_last=False, batches=100)
    two, system = _gpu_fit(tmp_path / "two", {"warmup_steps": 1}, drop_last=False, batches=100)
    assert len(system._step_graph.graphs) == 2
    one, system = _gpu_fit(
        tmp_path / "one", {"warmup_steps": 1, "max_graphs": 1}, drop_last=False, batches=100
    )
    assert len(system._step_graph.graphs) == 1 and system._step_graph.eager_steps == 1 + 2
    for key, value in eager.items():
        torch.testing.assert_close(two[key], value, rtol=1e-3, atol=1e-4, msg=key)
        torch.testing.assert_close(one[key], value, rtol=1e-3, atol=1e-4, msg=key)


@cuda
def test_gradients_set_to_none_are_bound_again_and_moved_memory_is_reported():
    torch.manual_seed(0)
    model, tasks, corruption, datamodule = tiny_setup()
    system = NeuralTreeSystem(model, tasks, corruption).cuda()
    datamodule.setup("fit")
    system.fit_tasks({name: frames["train"] for name, frames in datamodule.frames.items()})
    batch, _, _ = next(iter(datamodule.train_dataloader()))
    batch = {name: b.to("cuda") for name, b in batch.items()}
    task_losses = {task.name: functools.partial(system.weighted_task_loss, task) for task in tasks}
    step = StepGraph(task_losses, dict(model.named_parameters()), warmup_steps=1)
    step(batch)  # warm-up
    step(batch)  # capture + replay
    (captured,) = step.graphs.values()
    name, parameter, grad = captured.grads[0]
    expected = grad.clone()
    # set to None (as Lightning does before validation): the captured tensor is bound again, zeroed, and written
    model.zero_grad(set_to_none=True)
    step(batch)
    assert parameter.grad is grad and step.replays == 2
    assert grad.abs().sum() > 0 and not torch.equal(grad, expected)  # zeroed, then written by the replay
    # replaced: reported, not written through a stale address
    parameter.grad = torch.zeros_like(grad)
    with pytest.raises(RuntimeError, match=re.escape(f"parameter '{name}' has another .grad")):
        step(batch)
    parameter.grad = grad
    # the model moved off and back: the parameters live elsewhere now (the old memory held, so not reused)
    held = [p.data for p in model.parameters()]
    model.cpu().cuda()
    with pytest.raises(
        RuntimeError, match=r"no longer lives where its graph was captured|has another \.grad"
    ):
        step(batch)
    assert all(old.is_cuda for old in held)


@cuda
def test_validation_between_epochs_leaves_captured_training_unchanged(tmp_path):
    # Lightning sets every .grad to None before validation (on_validation_model_zero_grad); the graph's gradient
    # tensors are bound again at the next step
    eager, _ = _gpu_fit(tmp_path / "eager", False, val_batches=2)
    graphed, system = _gpu_fit(tmp_path / "graph", {"warmup_steps": 2}, val_batches=2)
    assert system._step_graph.replays == system.batches_trained - 2 > 8
    for key, value in eager.items():
        torch.testing.assert_close(graphed[key], value, rtol=1e-4, atol=1e-5, msg=key)


@cuda
def test_a_new_batch_shape_under_torch_compile_is_compiled_before_its_capture(tmp_path):
    # the epoch's last, smaller batch is a new shape for torch.compile: compiling it inside a capture fails (the
    # compiler reads tensor values on the host), so it runs eagerly once and is captured in the next epoch
    graphed, system = _gpu_fit(
        tmp_path / "graph", {"warmup_steps": 1}, drop_last=False, batches=100, compile={"mode": "default"}
    )
    step = system._step_graph
    assert len(step.graphs) == 2 and step.eager_steps == 2 and step.replays == system.batches_trained - 2
    assert all(value.isfinite().all() for value in graphed.values() if value.is_floating_point())


@cuda
def test_captured_training_under_bf16_autocast_follows_uncaptured_training(tmp_path):
    eager, _ = _gpu_fit(tmp_path / "eager", False, precision="bf16-mixed")
    graphed, system = _gpu_fit(tmp_path / "graph", True, precision="bf16-mixed")
    assert system._step_graph.replays == system.batches_trained - 3 > 8
    for key, value in eager.items():
        torch.testing.assert_close(graphed[key], value, rtol=2e-2, atol=2e-3, msg=key)


@cuda
def test_fp16_loss_scaling_is_refused(tmp_path):
    with pytest.raises(ValueError, match="precision '16-mixed'"):
        _gpu_fit(tmp_path, True, precision="16-mixed")
