"""NeuralTreeSystem end to end on a tiny tree and real RBD rows: EMA, exact resume, per-task strategy."""

from __future__ import annotations

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from helpers import KillAfter, Killed, quiet_trainer, tiny_setup
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file

from cortex.training import EMA, NeuralTreeSystem, SavePretrained


def _trainer(tmp_path, callbacks, max_epochs=2, **kwargs):
    return quiet_trainer(tmp_path, callbacks, max_epochs=max_epochs, **kwargs)


def test_ema_weights_differ_from_raw_are_used_for_validation_and_saved(tmp_path):
    model, tasks, corruption, datamodule = tiny_setup()
    system = NeuralTreeSystem(model, tasks, corruption, optim={"lr": 1e-2})
    ema = EMA(decay=0.9)
    seen_in_validation = []

    class Probe(pl.Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            seen_in_validation.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})

    raw_at_end = {}

    class RawAtEnd(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            raw_at_end.update({k: v.clone() for k, v in pl_module.model.state_dict().items()})

    trainer = _trainer(tmp_path, [RawAtEnd(), ema, Probe(), SavePretrained(tmp_path / "model")])
    trainer.fit(system, datamodule=datamodule)
    averaged = ema.averaged_state_dict(model)
    name = (
        "roots.protein.embed_tokens.weight"
        if "roots.protein.embed_tokens.weight" in averaged
        else next(
            k
            for k, v in averaged.items()
            if v.is_floating_point() and v.requires_grad is False and v.dim() == 2
        )
    )
    assert ema.num_updates == trainer.global_step
    assert not torch.allclose(averaged[name], raw_at_end[name])
    # The last validation saw the averages as of its epoch, and the saved model holds the final averages.
    assert not torch.allclose(seen_in_validation[-1][name], raw_at_end[name])
    saved = load_file(tmp_path / "model" / "model.safetensors")
    for key, value in saved.items():
        torch.testing.assert_close(value, averaged[key].cpu())
    # After fit the in-memory model holds the averages as well.
    torch.testing.assert_close(model.state_dict()[name], averaged[name])


def _fit(tmp_path, max_epochs, ckpt_path=None, strategy="joint", dropout=0.1, kill_after=None):
    torch.manual_seed(0)
    model, tasks, corruption, datamodule = tiny_setup(dropout=dropout)
    system = NeuralTreeSystem(
        model, tasks, corruption, optim={"lr": 1e-2, "warmup_steps": 2}, strategy=strategy, seed=3
    )
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)
    ema = EMA(decay=0.8)
    kill = [KillAfter(kill_after)] if kill_after is not None else []
    trainer = _trainer(tmp_path, [ema, checkpoint, *kill], max_epochs=max_epochs)
    trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path)
    return system, ema, trainer


@pytest.mark.parametrize("strategy", ["joint", "per_task"])
def test_resumed_run_ends_with_the_same_weights(tmp_path, strategy):
    full, full_ema, full_trainer = _fit(tmp_path / "full", 3, strategy=strategy)
    steps_per_epoch = full_trainer.global_step // 3
    # Killed in epoch 1, after its checkpoint of epoch 0 was written.
    with pytest.raises(Killed):
        _fit(tmp_path / "part", 3, strategy=strategy, kill_after=steps_per_epoch + 1)
    checkpoint = next((tmp_path / "part").glob("epoch=0*.ckpt"))
    resumed, resumed_ema, second = _fit(tmp_path / "resumed", 3, ckpt_path=str(checkpoint), strategy=strategy)
    assert second.global_step == full_trainer.global_step
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    for key in full_state:
        torch.testing.assert_close(resumed_state[key], full_state[key], rtol=1e-6, atol=1e-7)
    assert resumed_ema.num_updates == full_ema.num_updates
    full_opt, resumed_opt = full.optimizers().optimizer, resumed.optimizers().optimizer
    assert full_opt.param_groups[0]["lr"] == pytest.approx(resumed_opt.param_groups[0]["lr"])


def test_per_task_strategy_takes_one_optimizer_step_per_task(tmp_path):
    model, tasks, corruption, datamodule = tiny_setup()
    system = NeuralTreeSystem(model, tasks, corruption, strategy="per_task")
    trainer = _trainer(tmp_path, [], max_epochs=1)
    trainer.fit(system, datamodule=datamodule)
    loader = datamodule.train_dataloader()
    iter(loader)  # a CombinedLoader knows its length once iterated
    batches = len(loader)
    assert batches > 0
    assert trainer.global_step == len(tasks) * batches


def test_training_inputs_are_corrupted_and_evaluation_inputs_clean():
    model, tasks, corruption, datamodule = tiny_setup()
    system = NeuralTreeSystem(model, tasks, corruption)
    datamodule.setup("fit")
    batch = next(iter(datamodule.task_dataloader("bind", "train")))
    torch.manual_seed(0)
    train_inputs = system.root_inputs(batch, None)["protein"]
    eval_inputs = system.root_inputs(batch, 0.0)["protein"]
    assert train_inputs["noise_level"].shape == (batch.batch_size,)
    assert train_inputs["noise_level"].gt(0).any()
    assert eval_inputs["noise_level"].eq(0).all()
    outputs = model(system.root_inputs(batch, None), leaves=["bind"])
    assert outputs.root_outputs["protein"].is_corrupted.any()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"optim": {"lr": -1.0}}, "optim.lr"),
        ({"strategy": "sideways"}, "strategy"),
        ({"task_weights": {"nope": 1.0}}, "nope"),
        ({"corruption": {"dna": None}}, "dna"),
    ],
)
def test_bad_arguments_fail_naming_the_value(kwargs, key):
    model, tasks, corruption, _ = tiny_setup()
    arguments = {"corruption": corruption, **kwargs}
    with pytest.raises(ValueError, match=key):
        NeuralTreeSystem(model, tasks, **arguments)


def test_batches_move_to_the_device_with_their_structure():
    model, tasks, corruption, datamodule = tiny_setup()
    system = NeuralTreeSystem(model, tasks, corruption)
    datamodule.setup("fit")
    batch, _, _ = next(iter(datamodule.train_dataloader()))  # CombinedLoader: (batch, index, loader index)
    moved = system.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert set(moved) == set(batch)
    for name, tree_batch in moved.items():
        assert set(tree_batch.root_inputs["protein"]) == set(batch[name].root_inputs["protein"])
        assert all(t.device.type == "meta" for t in tree_batch.root_inputs["protein"].values())
        assert all(t.device.type == "meta" for t in tree_batch.labels.values())
        assert set(tree_batch.labels) == set(batch[name].labels)
    # anything else takes Lightning's path
    assert system.transfer_batch_to_device([torch.ones(2)], torch.device("meta"), 0)[0].device.type == "meta"


class SavedActivations(pl.Callback):
    """Peak bytes of tensors saved for backward and still alive, over training steps: every saved tensor is
    packed into a holder that counts its bytes until autograd releases it."""

    def __init__(self) -> None:
        self.live = self.peak = 0
        self.hooks = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        meter = self

        class Holder:
            def __init__(self, tensor):
                self.tensor, self.size = tensor, tensor.numel() * tensor.element_size()
                meter.live += self.size
                meter.peak = max(meter.peak, meter.live)

            def __del__(self):
                meter.live -= self.size

        self.hooks = torch.autograd.graph.saved_tensors_hooks(Holder, lambda holder: holder.tensor)
        self.hooks.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.hooks.__exit__(None, None, None)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_sequential_joint_backward_gives_the_summed_gradient_with_one_task_of_activations(
    tmp_path, accumulate
):
    results = {}
    for mode in ("sum", "sequential"):
        torch.manual_seed(0)
        model, tasks, corruption, datamodule = tiny_setup()
        system = NeuralTreeSystem(model, tasks, corruption, joint_backward=mode)
        meter = SavedActivations()
        trainer = _trainer(
            tmp_path / mode, [meter], max_epochs=1, limit_train_batches=4, limit_val_batches=0,
            accumulate_grad_batches=accumulate,
        )  # fmt: skip
        trainer.fit(system, datamodule=datamodule)
        results[mode] = (system.model.state_dict(), meter.peak)
    (summed, summed_peak), (sequential, sequential_peak) = results["sum"], results["sequential"]
    for key in summed:
        torch.testing.assert_close(sequential[key], summed[key], rtol=1e-5, atol=1e-6)
    # two tasks of similar size: the sequential peak holds about one task's activations
    assert sequential_peak < 0.7 * summed_peak, (sequential_peak, summed_peak)


def test_auto_joint_backward_is_sequential_on_one_process_and_bad_values_are_named(tmp_path):
    model, tasks, corruption, datamodule = tiny_setup()
    with pytest.raises(ValueError, match="joint_backward='both'"):
        NeuralTreeSystem(model, tasks, corruption, joint_backward="both")
    system = NeuralTreeSystem(model, tasks, corruption)
    _trainer(tmp_path, [], max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(
        system, datamodule=datamodule
    )
    assert system.joint_backward == "auto" and system._sequential_backward()


def test_cuda_graph_compile_modes_take_the_summed_backward(tmp_path):
    model, tasks, corruption, _ = tiny_setup()
    with pytest.raises(ValueError, match="reduce-overhead"):
        NeuralTreeSystem(
            model, tasks, corruption, joint_backward="sequential", compile={"mode": "reduce-overhead"}
        )
    system = NeuralTreeSystem(model, tasks, corruption, compile={"mode": "reduce-overhead"})
    assert system._cudagraphs and system.joint_backward == "auto"


def test_training_losses_are_logged_on_the_loggers_steps_only(tmp_path):
    """Each `self.log` costs host time (issue 8): training losses are logged where Lightning writes to the loggers
    (every log_every_n_steps-th batch) and at an epoch's last batch, and the CSV logger gets those values."""
    model, tasks, corruption, datamodule = tiny_setup(num_rows=96, batch_size=8)  # 72 train rows: 9 batches
    system = NeuralTreeSystem(model, tasks, corruption)
    logged_at = []
    original_log = system.log

    def counting_log(name, *args, **kwargs):
        if name.endswith("train_loss"):
            logged_at.append((system.trainer.fit_loop.epoch_loop.batch_idx, name))
        return original_log(name, *args, **kwargs)

    system.log = counting_log
    trainer = quiet_trainer(tmp_path, [], max_epochs=1, limit_val_batches=0, log_every_n_steps=4)
    trainer.loggers = [CSVLogger(tmp_path, name="csv")]
    trainer.fit(system, datamodule=datamodule)
    names = {"bind/train_loss", "expr/train_loss", "train_loss"}
    steps = sorted({step for step, _ in logged_at})
    assert steps == [3, 7, 8]  # batches 4 and 8 (log_every_n_steps=4) and the epoch's last (9th)
    assert all({name for step, name in logged_at if step == s} == names for s in steps)
    metrics = pd.read_csv(next(tmp_path.glob("csv/*/metrics.csv")))
    written = metrics.dropna(subset=["train_loss"])
    assert list(written["step"]) == [3, 7]
    assert written[["bind/train_loss", "expr/train_loss"]].notna().all().all()


def test_per_batch_seeding_matches_manual_seed_and_queues_nothing():
    """The step's reseeding draws what torch.manual_seed would on the CPU, without queueing lazy seeding calls
    (torch.manual_seed queues one per uninitialised backend, with a formatted stack, every step)."""
    from cortex.training.system import seed_generators

    queued = [len(torch.cuda._queued_calls)]
    seed_generators(123, torch.device("cpu"))
    ours = torch.rand(4), torch.randint(10, (4,))
    queued.append(len(torch.cuda._queued_calls))
    torch.manual_seed(123)
    reference = torch.rand(4), torch.randint(10, (4,))
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))
    assert queued[0] == queued[1]
