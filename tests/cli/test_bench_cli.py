"""Smoke test of `cortex-bench` on a tiny grid, through the composed Hydra config."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module

from cortex.cli.bench import RESULT_COLUMNS, run_bench


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _compose(tmp_path, *overrides):
    with initialize_config_module("cortex.configs.bench", version_base="1.3"):
        return compose(config_name="bench", overrides=[f"output_dir={tmp_path}", *overrides])


def test_tiny_grid_writes_table_plot_summary(tmp_path):
    cfg = _compose(
        tmp_path,
        "problems=[easy]",
        "methods=[lambo,ga,random]",
        "seeds=[0,1]",
        "initial_size=8",
        "loop.batch_size=8",
        "loop.num_rounds=2",
        "loop.num_epochs=1",
        "loop.min_train_steps=0",
        "num_workers=2",
        "loop.lambo_steps=1",
        "loop.feature_dim=16",
    )
    summary = run_bench(cfg)
    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table.columns) == list(RESULT_COLUMNS)
    assert set(table["method"]) == {"lambo", "ga", "random"}
    assert set(table["seed"]) == {0, 1}
    assert table.groupby(["method", "seed"])["num_evals"].max().eq(24).all()
    assert (tmp_path / "best_so_far.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert summary["easy"]["lambo"]["budget"] == 24 and summary["easy"]["lambo"]["seeds"] == 2


def test_unknown_method_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"\['bayes'\] are unknown"):
        run_bench(_compose(tmp_path, "methods=[bayes]", "problems=[easy]"))
