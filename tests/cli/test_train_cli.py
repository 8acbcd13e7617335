"""Smoke runs of `cortex-train` on a tiny tree and real RBD rows, plus config checks that fail early."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from transformers import AutoModel

import cortex
from cortex.cli.train import build, check_config, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from helpers import rbd_slice

CONFIGS = Path(cortex.__file__).parent / "configs"
TEST_CONFIGS = Path(__file__).parent / "configs"
TINY = [
    f"hydra.searchpath=[file://{TEST_CONFIGS}]",
    "data=rbd_tiny",
    "roots.protein.max_length=32",
    "roots.protein.channel_dim=8",
    "roots.protein.embed_dim=8",
    "roots.protein.out_dim=8",
    "branches.property.channel_dim=8",
    "branches.property.out_dim=8",
    "datamodule.batch_size=16",
    "trainer.max_epochs=2",
    "logger=csv",
]


@pytest.fixture
def table(tmp_path, monkeypatch):
    path = tmp_path / "rbd.csv"
    rbd_slice(120).to_csv(path, index=False)
    monkeypatch.setenv("CORTEX_TEST_TABLE", str(path))
    return path


def _compose(tmp_path, overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=[*TINY, *overrides], return_hydra_config=False)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
        cfg.model_dir = str(tmp_path / "model")
    return cfg


def test_train_saves_a_model_that_autoloads_and_predicts_in_original_units(tmp_path, table):
    cfg = _compose(tmp_path, ["tasks=[rbd_bind,rbd_expr]", "save_best=rbd_expr/val_spearman"])
    model_dir = run(cfg)
    assert (model_dir / "best" / "config.json").is_file()
    model = AutoModel.from_pretrained(model_dir)
    frame = rbd_slice(120)
    inputs = model.tokenize(list(frame["sequence"][:8]))
    with torch.no_grad():
        output = model(**inputs, leaves=["rbd_bind"])
    loc = output.leaf_outputs["rbd_bind"].loc.mean(0)[:, 0]  # (B,)
    # Standardised predictions would sit near 0 with unit spread; original units follow the labels' mean.
    labels = torch.tensor(frame["bind_delta_log10Ka"].to_numpy())
    assert abs(loc.mean().item() - labels.mean().item()) < labels.std().item()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lr=-0.1", "optim.lr"),
        ("tasks.rbd_bind.leaf.type=classifier", "tasks.rbd_bind.leaf.type"),
        ("tasks.rbd_bind.leaf.type=potato", "tasks.rbd_bind.leaf.type"),
        ("data.rbd.source=/nonexistent/rbd.csv", "data.rbd.source"),
        ("+task_weights.nope=1.0", "task_weights.nope"),
        ("task_weights={nope:1.0}", "task_weights.nope"),
        ("+corruption.protein.name=scramble", "corruption.protein.name"),
        ("strategy=sideways", "strategy"),
    ],
)
def test_bad_config_fails_before_training_naming_the_key(tmp_path, table, override, key):
    cfg = _compose(tmp_path, ["tasks=[rbd_bind,rbd_expr]", override])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_config(cfg)


def _cli(args, tmp_path, table, timeout=120):
    env = {**os.environ, "CORTEX_TEST_TABLE": str(table)}
    command = [sys.executable, "-m", "cortex.cli.train", *args, *TINY]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_task_weights_override_reaches_the_system(tmp_path, table):
    system, _, _ = build(_compose(tmp_path, ["tasks=[rbd_bind,rbd_expr]", "task_weights={rbd_bind:2.5}"]))
    assert system.task_weights == {"rbd_bind": 2.5, "rbd_expr": 1.0}
    system, _, _ = build(_compose(tmp_path, ["tasks=[rbd_bind,rbd_expr]"]))
    assert system.task_weights == {"rbd_bind": 1.0, "rbd_expr": 1.0}


def test_cfg_job_prints_the_composed_config(tmp_path, table):
    result = _cli(["--cfg", "job"], tmp_path, table)
    assert result.returncode == 0, result.stderr
    assert "rbd_bind:" in result.stdout and "type: conv1d" in result.stdout


def test_unknown_task_name_fails_naming_it(tmp_path, table):
    with pytest.raises(Exception, match="tasks/not_a_task"):
        _compose(tmp_path, ["tasks=[rbd_bind,not_a_task]"])


@pytest.mark.slow
def test_multirun_sweep_runs_every_job(tmp_path, table):
    result = _cli(
        [
            "-m",
            "optim.lr=1e-3,3e-3",
            "trainer.max_epochs=1",
            "callbacks=none",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
        table,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "sweep").glob("*/model/config.json"))) == 2


def test_logger_none_trains_without_the_learning_rate_monitor(tmp_path, table):
    # LearningRateMonitor refuses a Trainer without a logger: logger=none must switch it off, not crash.
    cfg = _compose(tmp_path, ["tasks=[rbd_bind]", "logger=none", "trainer.max_epochs=1"])
    assert cfg.callbacks.lr_monitor is None and not cfg.logger
    model_dir = run(cfg)
    assert (model_dir / "config.json").is_file()
