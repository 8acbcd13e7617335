"""A tiny NeuralTree trained for a few seconds on real RBD windows (binding regressor + MLM), shared by the
design tests. Windows are residues [0, 24) of single mutants whose mutation lies in that window."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cortex.corruption.processes import MaskCorruption
from cortex.model.configuration_neural_tree import NeuralTreeConfig
from cortex.model.modeling_neural_tree import NeuralTreeModel

DATA = "data/rbd_starr2020_bind_expr.csv.gz"
WINDOW = 24


def rbd_windows() -> tuple[list[str], torch.Tensor]:
    frame = pd.read_csv(DATA).dropna(subset=["bind_delta_log10Ka"])
    frame = frame[~frame["sequence"].str.contains(r"\*")]
    site = frame["mutant"].str.extract(r"(\d+)")[0].astype(int)
    frame = frame[site <= WINDOW]
    sequences = frame["sequence"].str[:WINDOW].tolist()
    return sequences, torch.tensor(frame["bind_delta_log10Ka"].to_numpy(), dtype=torch.float32)[:, None]


def build_tiny_model(seed: int = 0) -> NeuralTreeModel:
    torch.manual_seed(seed)
    config = NeuralTreeConfig(
        roots={
            "protein": {"type": "conv1d", "max_length": 32, "embed_dim": 16, "channel_dim": 16, "out_dim": 16}
        },
        trunk={"type": "sum", "roots": ["protein"]},
        branches={
            "property": {"type": "conv1d", "out_dim": 16, "channel_dim": 16, "ensemble_size": 2},
            "generation": {"type": "conv1d", "out_dim": 16, "channel_dim": 16},
        },
        leaves={
            "bind": {"type": "regressor", "branch": "property", "out_dim": 1},
            "protein_mlm": {"type": "mlm", "branch": "generation", "root": "protein"},
        },
    )
    return NeuralTreeModel(config)


def train_tiny_model(num_steps: int = 40, seed: int = 0) -> NeuralTreeModel:
    model = build_tiny_model(seed)
    sequences, targets = rbd_windows()
    encoded = model.tokenize(sequences)
    model.leaves["bind"].fit_target_standardization(targets)
    process = MaskCorruption(model.get_tokenizer("protein").mask_token_id)
    model.attach_corruption({"protein": process})
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(num_steps):
        index = torch.randint(len(sequences), (64,), generator=generator)
        noise_level = torch.rand(64, generator=generator) * 0.5
        inputs = {
            "input_ids": encoded["input_ids"][index],
            "attention_mask": encoded["attention_mask"][index],
            "noise_level": noise_level,
        }
        output = model(root_inputs={"protein": inputs}, labels={"bind": targets[index], "protein_mlm": None})
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
    model.eval()
    return model


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Design tests run on one intra-op thread: the tiny models gain nothing from a second one, and on a shared,
    oversubscribed 2-core machine OpenMP workers spin at barriers (measured: the same tests took 278 s wall with
    2 threads at load 8, 13 s with 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model() -> NeuralTreeModel:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # see one_intra_op_thread
    try:
        return train_tiny_model()
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def rbd_seeds() -> list[str]:
    sequences, _ = rbd_windows()
    return sequences[:4]
