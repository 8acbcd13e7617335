"""Exact mid-epoch resume: a run killed after N optimizer steps (N not a multiple of the epoch length) and
resumed from its last step checkpoint ends with the weights, EMA and learning rate of the uninterrupted run,
having trained on the same batches in the same order, for both strategies and with DataLoader workers."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import KillAfter, Killed, quiet_trainer, rbd_slice, tiny_config, tiny_setup

from cortex.data.datamodule import TreeDataModule
from cortex.data.tables import RandomSplit, TableData
from cortex.model import NeuralTreeModel
from cortex.tasks.language_model import MLMTask
from cortex.training import EMA, NeuralTreeSystem

EPOCHS = 2


class ValidationLog(pl.Callback):
    """Records every task's validation metrics after every validation (an MLM task's are computed on inputs
    masked with draws from the global RNG)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.seen.append({key: float(value) for key, value in metrics.items() if "/val_" in key})


class BatchLog(pl.Callback):
    """Records (epoch, batch_idx, per-task input ids, first parameter after the step) for every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ids = tuple(tuple(b.root_inputs["protein"]["input_ids"].flatten().tolist()) for b in batch.values())
        self.seen.append((trainer.current_epoch, batch_idx, ids))


def _fit(
    root,
    strategy,
    *,
    num_workers=0,
    ckpt_path=None,
    kill_after=None,
    checkpoint=None,
    log=None,
    other_expr_rows=None,
    mlm=False,
    interval="step",
    **trainer_kwargs,
):
    torch.manual_seed(0)
    model, tasks, corruption, datamodule = tiny_setup(dropout=0.1)
    datamodule.num_workers = num_workers
    if mlm:
        # An MLM leaf: its validation masks at noise level 0.5, drawing from the global RNG.
        config = tiny_config(dropout=0.1)
        config.branches["generation"] = {"type": "conv1d", "out_dim": 8, "channel_dim": 8}
        config.leaves["mlm"] = {"type": "mlm", "branch": "generation", "root": "protein"}
        model = NeuralTreeModel(type(config)(**config.to_dict()))
        tasks = [*tasks, MLMTask("mlm", "mlm", {"protein": "sequence"}, data=tasks[0].data)]
        datamodule = TreeDataModule(
            tasks, model=model, batch_size=16, eval_batch_size=64, num_workers=num_workers
        )
    if other_expr_rows is not None:
        # "expr" trains on its own, smaller table: its loader is cycled within each epoch.
        expr = TableData(
            rbd_slice(other_expr_rows, offset=96),
            split=RandomSplit({"train": 0.75, "validation": 0.25}, seed=0),
        )
        datamodule = TreeDataModule(
            tasks,
            model=model,
            batch_size=16,
            eval_batch_size=64,
            mode="max_size_cycle",
            data={"expr": expr},
            num_workers=num_workers,
        )
    system = NeuralTreeSystem(
        model,
        tasks,
        corruption,
        optim={"lr": 1e-2, "warmup_steps": 1, "interval": interval},
        strategy=strategy,
        seed=3,
    )
    log, ema, validation = log or BatchLog(), EMA(decay=0.8), ValidationLog()
    callbacks = [ema, log, validation]
    if checkpoint is not None:
        callbacks.append(pl.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, **checkpoint))
    if kill_after is not None:
        callbacks.append(KillAfter(kill_after))
    trainer = quiet_trainer(
        root,
        callbacks,
        max_epochs=EPOCHS,
        enable_checkpointing=checkpoint is not None,
        **trainer_kwargs,
    )
    trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    trainer.validation_log = validation.seen
    return system, ema, log, trainer


# Each case: (strategy, _fit options, ModelCheckpoint arguments, kill after this many optimizer steps, resume
# from the checkpoint of this step, batches done at that checkpoint). 5 batches per epoch, 10 in the run;
# per_task takes 2 optimizer steps per batch (one per task).
CASES = {
    "joint-mid-epoch": ("joint", {}, {"every_n_train_steps": 3}, 7, 6, 6),
    "per_task-mid-epoch": ("per_task", {}, {"every_n_train_steps": 6}, 14, 12, 6),
    "joint-mid-epoch-2-workers": ("joint", {"num_workers": 2}, {"every_n_train_steps": 3}, 7, 6, 6),
    "joint-after-last-batch-of-epoch": ("joint", {}, {"every_n_train_steps": 5}, 7, 5, 5),
    "joint-epoch-end-2-workers": ("joint", {"num_workers": 2}, {"every_n_epochs": 1}, 7, 5, 5),
    # Validation (EMA weights swapped in) after batch 3 of each epoch; the checkpoint follows it.
    "per_task-after-mid-epoch-validation": ("per_task", {"val_check_interval": 3}, {}, 14, 6, 3),
    # Two batches per optimizer step (3 steps per epoch): step 2 ends batch 4, step 4 ends batch 7.
    "joint-accumulating-gradients": (
        "joint",
        {"accumulate_grad_batches": 2},
        {"every_n_train_steps": 2},
        4,
        2,
        4,
    ),
    # "expr" has 3 batches per epoch, cycled to the 5 of "bind": the checkpoint is in expr's second pass.
    # An MLM leaf too: its training and validation inputs are masked with global RNG draws.
    "joint-mlm-mid-epoch": ("joint", {"mlm": True}, {"every_n_train_steps": 3}, 7, 6, 6),
    # per_task steps an epoch-interval schedule itself at the epoch's last batch (trainer.is_last_batch).
    "per_task-epoch-lr-schedule": ("per_task", {"interval": "epoch"}, {"every_n_train_steps": 6}, 14, 12, 6),
    "joint-max_size_cycle-unequal-tasks": (
        "joint",
        {"other_expr_rows": 48},
        {"every_n_train_steps": 4},
        7,
        4,
        4,
    ),
}


@pytest.mark.parametrize(
    ("strategy", "options", "checkpoint", "kill_after", "resume_step", "done"),
    CASES.values(),
    ids=CASES.keys(),
)
def test_run_killed_mid_epoch_resumes_to_the_same_weights(
    tmp_path, strategy, options, checkpoint, kill_after, resume_step, done
):
    full, full_ema, full_log, full_trainer = _fit(tmp_path / "full", strategy, **options)
    assert full_trainer.num_training_batches == 5 and len(full_log.seen) == EPOCHS * 5
    killed_log = BatchLog()
    with pytest.raises(Killed):
        _fit(
            tmp_path / "part",
            strategy,
            kill_after=kill_after,
            checkpoint=checkpoint,
            log=killed_log,
            **options,
        )
    assert killed_log.seen == full_log.seen[: len(killed_log.seen)] and len(killed_log.seen) > done
    (path,) = (tmp_path / "part").glob(f"*-step={resume_step}.ckpt")
    resumed, resumed_ema, resumed_log, resumed_trainer = _fit(
        tmp_path / "resumed", strategy, ckpt_path=str(path), **options
    )
    # The remaining batches of the interrupted epoch, then the later ones, exactly as uninterrupted.
    assert resumed_log.seen == full_log.seen[done:]
    assert resumed_trainer.global_step == full_trainer.global_step
    # Validations after the resume log what the uninterrupted run logged. (A checkpoint written after an
    # epoch's last batch resumes past that epoch's validation: Lightning does not run it again.)
    validations = len(resumed_trainer.validation_log)
    assert validations > 0 and resumed_trainer.validation_log == full_trainer.validation_log[-validations:]
    assert all(resumed_trainer.validation_log)
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=0, msg=key)
    assert resumed_ema.num_updates == full_ema.num_updates
    for key, value in full_ema.averages.items():
        torch.testing.assert_close(resumed_ema.averages[key], value, rtol=0, atol=0, msg=key)
    full_lr = full.optimizers().optimizer.param_groups[0]["lr"]
    assert resumed.optimizers().optimizer.param_groups[0]["lr"] == full_lr


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_state_round_trip_yields_the_remaining_batches(num_workers):
    loaders = []
    for _ in range(2):
        *_, datamodule = tiny_setup()
        datamodule.num_workers = num_workers
        loaders.append(datamodule.task_dataloader("bind", "train"))
    loader, fresh = loaders
    loader.sampler.set_epoch(1)
    epoch = [batch.root_inputs["protein"]["input_ids"] for batch in loader]
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches_yielded": 2}
    fresh.load_state_dict(state)
    rest = [batch.root_inputs["protein"]["input_ids"] for batch in fresh]
    assert len(fresh) == len(epoch) and len(rest) == len(epoch) - 2
    for resumed, expected in zip(rest, epoch[2:], strict=True):
        torch.testing.assert_close(resumed, expected, rtol=0, atol=0)
    assert fresh.state_dict() == {"epoch": 1, "batches_yielded": len(epoch)}
    # A second resume in the same epoch counts from the start of the epoch, not from the first resume.
    fresh.load_state_dict(state)
    next(iter(fresh))
    again = tiny_setup()[-1].task_dataloader("bind", "train")
    again.load_state_dict(fresh.state_dict())
    assert fresh.state_dict() == {"epoch": 1, "batches_yielded": 3}
    for resumed, expected in zip(again, epoch[3:], strict=True):
        torch.testing.assert_close(resumed.root_inputs["protein"]["input_ids"], expected, rtol=0, atol=0)
    with pytest.raises(
        ValueError, match=r"batches_yielded=9 for epoch 1; expected 0 <= batches_yielded <= 5"
    ):
        fresh.load_state_dict({"epoch": 1, "batches_yielded": 9})
    with pytest.raises(ValueError, match=r"got keys \['epoch'\]"):
        fresh.load_state_dict({"epoch": 1})
