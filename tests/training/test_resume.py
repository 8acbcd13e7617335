"""Exact mid-epoch resume: a run killed after N optimizer steps (N not a multiple of the epoch length) and
resumed from its last step checkpoint ends with the weights, EMA and learning rate of the uninterrupted run,
having trained on the same batches in the same order, for both strategies and with DataLoader workers."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from helpers import tiny_setup

from cortex.training import EMA, NeuralTreeSystem

EPOCHS = 2


class Killed(RuntimeError):
    pass


class KillAfter(pl.Callback):
    """Ends training abruptly (an exception, as a crash would) once `steps` optimizer steps are done."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.steps:
            raise Killed(f"killed after {trainer.global_step} steps")


class BatchLog(pl.Callback):
    """Records (epoch, batch_idx, per-task input ids, first parameter after the step) for every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        ids = tuple(tuple(b.root_inputs["protein"]["input_ids"].flatten().tolist()) for b in batch.values())
        self.seen.append((trainer.current_epoch, batch_idx, ids))


def _fit(root, strategy, *, num_workers=0, ckpt_path=None, kill_after=None, every_n_steps=None, log=None):
    torch.manual_seed(0)
    model, tasks, corruption, datamodule = tiny_setup(dropout=0.1)
    datamodule.num_workers = num_workers
    system = NeuralTreeSystem(
        model, tasks, corruption, optim={"lr": 1e-2, "warmup_steps": 2}, strategy=strategy, seed=3
    )
    log, ema = log or BatchLog(), EMA(decay=0.8)
    callbacks = [ema, log]
    if every_n_steps is not None:
        callbacks.append(
            pl.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_train_steps=every_n_steps)
        )
    if kill_after is not None:
        callbacks.append(KillAfter(kill_after))
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=every_n_steps is not None,
        deterministic=True,
        default_root_dir=root,
    )
    trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    return system, ema, log, trainer


@pytest.mark.parametrize(
    ("strategy", "num_workers"), [("joint", 0), ("per_task", 0), ("joint", 2)], ids=lambda v: str(v)
)
def test_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, strategy, num_workers):
    full, full_ema, full_log, full_trainer = _fit(tmp_path / "full", strategy, num_workers=num_workers)
    steps_per_batch = 1 if strategy == "joint" else 2  # per_task: one optimizer step per task
    batches_per_epoch = full_trainer.num_training_batches
    assert len(full_log.seen) == EPOCHS * batches_per_epoch
    # A checkpoint every 3 batches, killed after 7: the last checkpoint (batch 6) is mid-epoch 1.
    every = 3 * steps_per_batch
    killed_log = BatchLog()
    with pytest.raises(Killed):
        _fit(
            tmp_path / "part",
            strategy,
            num_workers=num_workers,
            kill_after=7 * steps_per_batch,
            every_n_steps=every,
            log=killed_log,
        )
    assert len(killed_log.seen) == 7 and killed_log.seen == full_log.seen[:7]
    checkpoint = tmp_path / "part" / f"epoch=1-step={2 * every}.ckpt"
    assert batches_per_epoch == 5 and checkpoint.is_file()  # 6 batches: mid-epoch 1 (not a multiple of 5)
    resumed, resumed_ema, resumed_log, resumed_trainer = _fit(
        tmp_path / "resumed", strategy, num_workers=num_workers, ckpt_path=str(checkpoint)
    )
    # The remaining batches of the interrupted epoch, then the later ones, exactly as uninterrupted.
    assert resumed_log.seen == full_log.seen[6:]
    assert resumed_trainer.global_step == full_trainer.global_step
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for key, value in full_state.items():
        torch.testing.assert_close(resumed_state[key], value, rtol=0, atol=0, msg=key)
    assert resumed_ema.num_updates == full_ema.num_updates
    for key, value in full_ema.averages.items():
        torch.testing.assert_close(resumed_ema.averages[key], value, rtol=0, atol=0, msg=key)
    full_lr = full.optimizers().optimizer.param_groups[0]["lr"]
    assert resumed.optimizers().optimizer.param_groups[0]["lr"] == full_lr
