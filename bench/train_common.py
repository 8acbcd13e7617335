"""Shared pieces of the training quality benchmarks (bench/train_gfp.py, bench/train_rbd.py).

A run is the project's Hydra config (`cortex-train`'s train.yaml) plus overrides, trained in-process; it is then
scored on the held-out test split with the same metric code the training system logs (ensemble-mean Spearman,
Gaussian NLL of the ensemble's predictive, 90% interval coverage).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import cortex
from cortex.cli.train import build
from cortex.training.metrics import RegressionMetrics

CONFIGS = Path(cortex.__file__).parent / "configs"


def arguments(description: str, default_epochs: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator: cpu | gpu")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed on GPU")
    parser.add_argument("--max-epochs", type=int, default=default_epochs)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop training after this many minutes (Lightning max_time; a guard for time-boxed runs)",
    )
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output-dir", default="/tmp/cortex-bench", help="checkpoints, logs, saved models")
    parser.add_argument("--out", required=False, help="results JSON path")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides applied to every run")
    return parser


def hardware(args: argparse.Namespace) -> str:
    if args.accelerator == "gpu" and torch.cuda.is_available():
        device = f"{args.devices}x {torch.cuda.get_device_name(0)}"
    else:
        # With --parallel the trees train in worker processes: their thread count is --num-threads, not ours.
        threads = args.num_threads or torch.get_num_threads()
        device = f"CPU ({platform.processor() or platform.machine()}, {threads} threads per process)"
    return f"{device}; torch {torch.__version__}; precision {args.precision}"


def compose_config(name: str, args: argparse.Namespace, overrides: list[str]) -> DictConfig:
    """`train.yaml` + the benchmark's common overrides (accelerator, epochs, batch size, time cap) + `overrides`
    + the command line's extra overrides, writing under `args.output_dir`/`name`."""
    common = [
        f"trainer.accelerator={args.accelerator}",
        f"trainer.devices={args.devices}",
        f"trainer.precision={args.precision}",
        f"trainer.max_epochs={args.max_epochs}",
        f"datamodule.batch_size={args.batch_size}",
        "logger=csv",
        "+trainer.enable_progress_bar=false",
    ]
    if args.max_minutes is not None:
        if not args.max_minutes > 0:
            raise ValueError(f"--max-minutes={args.max_minutes}; expected > 0")
        seconds = round(args.max_minutes * 60)
        common.append(
            f"+trainer.max_time=00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        )
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=[*common, *overrides, *args.overrides])
    with open_dict(cfg):
        cfg.output_dir = str(Path(args.output_dir) / name)
        cfg.model_dir = str(Path(args.output_dir) / name / "model")
    return cfg


def split_frames(args: argparse.Namespace, overrides: list[str]) -> dict[str, dict[str, Any]]:
    """{task: {split: rows}} exactly as a run of `overrides` splits its data (nothing is trained)."""
    _, datamodule, _ = build(compose_config("split", args, overrides))
    datamodule.setup("fit")
    return datamodule.frames


def train_and_test(
    name: str, args: argparse.Namespace, overrides: list[str]
) -> tuple[dict[str, dict[str, float]], float, dict[str, dict[str, Any]]]:
    """Trains the config `train.yaml` + `overrides` and returns ({task: test metrics}, training minutes,
    {task: {split: rows}} as the data module split them); each task's metrics also hold "validation" (the same
    metrics of the final model on the validation split).

    Test metrics per task: spearman / pearson / rmse / nll / coverage_90 of the (EMA) model on the test split,
    with the ensemble's predictive (mean of member means, mean member variance + variance of member means)."""
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    cfg = compose_config(name, args, overrides)
    pl.seed_everything(cfg.seed, workers=True)
    system, datamodule, trainer = build(cfg)
    datamodule.setup("fit")
    start = time.perf_counter()
    trainer.fit(system, datamodule=datamodule)
    minutes = (time.perf_counter() - start) / 60
    results = test_metrics(system, datamodule, "test")
    for task, metrics in test_metrics(system, datamodule, "validation").items():
        results[task]["validation"] = metrics
    return results, minutes, datamodule.frames


@torch.no_grad()
def test_metrics(system: Any, datamodule: Any, split: str = "test") -> dict[str, dict[str, float]]:
    """{task: {spearman, pearson, rmse, nll, coverage_90}} on each task's `split`, at noise level 0."""
    model = system.model.eval()
    device = next(model.parameters()).device
    results = {}
    for task in system.tasks:
        metric = RegressionMetrics()
        for batch in datamodule.task_dataloader(task.name, split):
            batch = batch.to(device)
            inputs = system.root_inputs(batch, 0.0)
            output = model(inputs, leaves=[task.leaf]).leaf_outputs[task.leaf]
            metric.update(output.loc.float().cpu(), output.scale.float().cpu(), batch.labels[task.name].cpu())
        results[task.name] = {key: float(value) for key, value in metric.compute().items()}
    return results
