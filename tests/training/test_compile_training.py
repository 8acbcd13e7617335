"""Training with `compile`: the model is compiled in place (no `_orig_mod.` keys anywhere), the saved model
loads, and with length bucketing a run on real sequences of varying length compiles at most once per bucket.

Backend "aot_eager" (dynamo + AOTAutograd, where graph breaks and recompiles are decided); inductor's C++ code
generation takes about a minute per graph on 2 CPU cores and changes neither.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch
from helpers import quiet_trainer, tiny_setup
from safetensors.torch import load_file
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from cortex.corruption import MaskCorruption
from cortex.data.datamodule import TreeDataModule
from cortex.data.tables import RandomSplit, TableData
from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.tasks.regression import RegressionTask
from cortex.training import NeuralTreeSystem, SavePretrained

RFP = Path(__file__).resolve().parents[2] / "data" / "lambo_rfp_proxy_seed_data.csv.gz"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _trainer(tmp_path, callbacks=(), **kwargs):
    return quiet_trainer(tmp_path, callbacks, deterministic=False, enable_checkpointing=False, **kwargs)


def test_compile_true_compiles_in_place_and_saved_model_loads(tmp_path):
    model, tasks, corruption, datamodule = tiny_setup(num_rows=48)
    keys = sorted(model.state_dict())
    counter = CompileCounterWithBackend("aot_eager")
    system = NeuralTreeSystem(model, tasks, corruption, optim={"lr": 1e-2}, compile={"backend": counter})
    trainer = _trainer(tmp_path, [SavePretrained(tmp_path / "model")], max_epochs=1)
    trainer.fit(system, datamodule=datamodule)

    assert counter.frame_count >= 1  # the training forward really ran compiled
    assert sorted(model.state_dict()) == keys
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint_keys = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    saved_keys = load_file(tmp_path / "model" / "model.safetensors")
    for where, names in (("checkpoint", checkpoint_keys), ("model.safetensors", saved_keys)):
        assert not [k for k in names if "_orig_mod" in k], where
    assert sorted(saved_keys) == keys

    loaded = NeuralTreeModel.from_pretrained(tmp_path / "model").eval()
    model.eval()
    inputs = {"protein": model.tokenize(["NITNLCPFGEVFNATRFASVYAWN", "NITNLCPFGEV"])}
    with torch.no_grad():
        reference = model(inputs).leaf_outputs["bind"].loc
    torch.testing.assert_close(loaded(inputs).leaf_outputs["bind"].loc, reference)


@pytest.mark.parametrize("compile", ["yes", 1, {"backend": "aot_eager", "bakend": "x"}])
def test_bad_compile_argument_is_named(compile):
    model, tasks, corruption, _ = tiny_setup(num_rows=16)
    with pytest.raises(ValueError, match="compile"):
        NeuralTreeSystem(model, tasks, corruption, compile=compile)


def rfp_setup(length_buckets, batch_size=2, num_rows=48):
    """A conv tree trained on real RFP sequences (216-228 residues) to predict FoldX stability."""
    frame = pd.read_csv(RFP).iloc[:num_rows]
    config = NeuralTreeConfig(
        roots={
            "protein": {
                "type": "conv1d",
                "max_length": 232,
                "embed_dim": 8,
                "channel_dim": 8,
                "out_dim": 8,
                "num_blocks": 1,
                "kernel_size": 3,
            }
        },
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"property": {"type": "mlp", "out_dim": 8, "hidden_dim": 8}},
        leaves={"stability": {"type": "regressor", "branch": "property"}},
    )
    model = NeuralTreeModel(config)
    data = TableData(frame, split=RandomSplit({"train": 0.75, "validation": 0.25}, seed=0))
    task = RegressionTask("stability", "stability", {"protein": "foldx_seq"}, ["stability"], data=data)
    datamodule = TreeDataModule(
        [task], model=model, batch_size=batch_size, seed=0, length_buckets=length_buckets
    )
    corruption = {"protein": MaskCorruption(model.get_tokenizer("protein").mask_token_id)}
    return model, [task], corruption, datamodule


class PaddedLengths(pl.Callback):
    def __init__(self):
        self.lengths = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lengths.append(batch["stability"].root_inputs["protein"]["input_ids"].shape[1])


def test_length_buckets_compile_at_most_once_per_bucket(tmp_path):
    buckets = [216, 220, 232]
    model, tasks, corruption, datamodule = rfp_setup(buckets)
    counter = CompileCounterWithBackend("aot_eager")
    system = NeuralTreeSystem(
        model, tasks, corruption, optim={"lr": 1e-3}, compile={"backend": counter, "fullgraph": True}
    )
    lengths = PaddedLengths()
    trainer = _trainer(tmp_path, [lengths], max_epochs=2, limit_val_batches=0)
    trainer.fit(system, datamodule=datamodule)

    seen = set(lengths.lengths)
    assert len(lengths.lengths) == 2 * 18  # 36 training rows, batch 2, 2 epochs
    assert seen <= set(buckets) and len(seen) >= 2, seen
    assert 1 <= counter.frame_count <= len(seen)
    assert sum(counters["graph_break"].values()) == 0
