"""`cortex-train`: trains a NeuralTree from a Hydra config and writes a `save_pretrained` directory.

    cortex-train                                  # the default run (configs/train.yaml)
    cortex-train --cfg job                        # print the composed config
    cortex-train optim.lr=1e-3 trainer.max_epochs=3
    cortex-train -m optim.lr=1e-3,3e-3            # multirun sweep
    cortex-train trainer=ddp_cpu                  # 2-process DDP on CPU (gloo)
    cortex-train resume_from=<run>/checkpoints/last.ckpt

Config groups are named after the packages: roots, trunk, branches, tasks, data, corruption, optim, trainer,
callbacks, logger. Every task entry holds the task object (`task`, instantiated), its leaf node (`leaf`,
a NeuralTreeConfig leaf dict) and the name of its data entry (`data`, a key of `cfg.data`).
Every value is checked before any data is read or any step taken (`check_config`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from cortex.corruption import CORRUPTION_PROCESSES, build_corruption
from cortex.data.datamodule import TreeDataModule
from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.model.configuration_neural_tree import LEAF_TYPES
from cortex.training import NeuralTreeSystem, OptimizerConfig
from cortex.training.system import STRATEGIES

logger = logging.getLogger(__name__)

# Leaf types each task class trains (the task <-> leaf contract of docs/architecture.md).
TASK_LEAF_TYPES: dict[str, tuple[str, ...]] = {
    "cortex.tasks.RegressionTask": ("regressor",),
    "cortex.tasks.regression.RegressionTask": ("regressor",),
    "cortex.tasks.ClassificationTask": ("classifier",),
    "cortex.tasks.classification.ClassificationTask": ("classifier",),
    "cortex.tasks.MLMTask": ("mlm",),
    "cortex.tasks.language_model.MLMTask": ("mlm",),
    "cortex.tasks.CausalLMTask": ("causal_lm",),
    "cortex.tasks.language_model.CausalLMTask": ("causal_lm",),
}


def _container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def check_config(cfg: DictConfig) -> None:
    """Raises ValueError naming the config key of the first bad value: unknown or mismatched tasks and
    leaves, a missing data file, bad optimizer values, an unknown strategy or corruption process."""
    if not cfg.tasks:
        raise ValueError("tasks is empty; expected at least one task (e.g. tasks=[rbd_bind])")
    for name, entry in cfg.tasks.items():
        for key in ("task", "leaf", "data"):
            if key not in entry:
                raise ValueError(f"tasks.{name} has no '{key}' key; expected keys task, leaf, data")
        target = entry.task.get("_target_")
        leaf_type = entry.leaf.get("type")
        if leaf_type not in LEAF_TYPES:
            raise ValueError(f"tasks.{name}.leaf.type={leaf_type!r}; expected one of {sorted(LEAF_TYPES)}")
        if target in TASK_LEAF_TYPES and leaf_type not in TASK_LEAF_TYPES[target]:
            raise ValueError(
                f"tasks.{name}.leaf.type={leaf_type!r} does not match tasks.{name}.task._target_={target}; "
                f"expected one of {TASK_LEAF_TYPES[target]}"
            )
        if entry.leaf.get("branch") not in cfg.branches:
            raise ValueError(
                f"tasks.{name}.leaf.branch={entry.leaf.get('branch')!r}; expected one of {sorted(cfg.branches)}"
            )
        if entry.data not in cfg.data:
            raise ValueError(f"tasks.{name}.data={entry.data!r}; expected one of {sorted(cfg.data)}")
        for root in entry.task.get("inputs", {}):
            if root not in cfg.roots:
                raise ValueError(
                    f"tasks.{name}.task.inputs names root {root!r}; expected one of {sorted(cfg.roots)}"
                )
    for name in cfg.task_weights or {}:
        if name not in cfg.tasks:
            raise ValueError(
                f"task_weights.{name}: unknown task {name!r}; expected one of {sorted(cfg.tasks)}"
            )
    for name, entry in cfg.data.items():
        sources = entry.get("source")
        sources = sources.values() if isinstance(sources, DictConfig) else [sources]
        for source in sources:
            if isinstance(source, str) and not Path(source).exists():
                raise ValueError(
                    f"data.{name}.source={source!r} does not exist (working directory {os.getcwd()}); "
                    "expected a path to a table"
                )
    for root, spec in cfg.corruption.items():
        if root not in cfg.roots:
            raise ValueError(f"corruption.{root}: unknown root {root!r}; expected one of {sorted(cfg.roots)}")
        if spec.get("name") not in CORRUPTION_PROCESSES:
            raise ValueError(
                f"corruption.{root}.name={spec.get('name')!r}; expected one of {sorted(CORRUPTION_PROCESSES)}"
            )
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy={cfg.strategy!r}; expected one of {STRATEGIES}")
    OptimizerConfig(**_container(cfg.optim))
    num_threads = cfg.get("num_threads")
    if num_threads is not None and not (isinstance(num_threads, int) and num_threads >= 1):
        raise ValueError(f"num_threads={num_threads!r}; expected null (torch's default) or an integer >= 1")
    if cfg.resume_from is not None and not Path(cfg.resume_from).is_file():
        raise ValueError(f"resume_from={cfg.resume_from!r} is not a file; expected a Lightning .ckpt")


def build(cfg: DictConfig) -> tuple[NeuralTreeSystem, TreeDataModule, pl.Trainer]:
    """The system, data module and trainer a config describes (nothing is trained)."""
    check_config(cfg)
    model_config = NeuralTreeConfig(
        roots=_container(cfg.roots),
        trunk=_container(cfg.trunk),
        branches=_container(cfg.branches),
        leaves={name: _container(entry.leaf) for name, entry in cfg.tasks.items()},
    )
    model = NeuralTreeModel(model_config)
    data = {name: instantiate(entry) for name, entry in cfg.data.items()}
    tasks = [instantiate(entry.task, data=data[entry.data]) for entry in cfg.tasks.values()]
    corruption = {
        root: build_corruption(
            spec["name"], model.get_tokenizer(root), **{k: v for k, v in spec.items() if k != "name"}
        )
        for root, spec in _container(cfg.corruption).items()
    }
    datamodule = TreeDataModule(tasks, model=model, **_container(cfg.datamodule))
    system = NeuralTreeSystem(
        model,
        tasks,
        corruption,
        optim=_container(cfg.optim),
        strategy=cfg.strategy,
        task_weights=_container(cfg.task_weights),
        gradient_clip_val=cfg.gradient_clip_val,
        seed=cfg.seed,
        compile=cfg.compile,
        joint_backward=cfg.get("joint_backward", "auto"),
        step_graph=_container(cfg.get("step_graph", False)),
    )
    # A callback set to null (e.g. `callbacks.lr_monitor=null`, or by logger=none) is left out.
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values() if callback is not None]
    loggers = [instantiate(log) for log in cfg.logger.values()] or False
    trainer_kwargs: dict[str, Any] = {"callbacks": callbacks, "logger": loggers}
    if cfg.strategy == "per_task" and cfg.trainer.get("strategy") == "ddp":
        # A per-task step leaves the other tasks' leaves without gradients (ecosystem notes 3.2).
        trainer_kwargs["strategy"] = "ddp_find_unused_parameters_true"
    if cfg.strategy == "per_task":
        trainer_kwargs["gradient_clip_val"] = None  # Lightning cannot clip manual optimisation
    trainer = instantiate(cfg.trainer, **trainer_kwargs)
    return system, datamodule, trainer


def run(cfg: DictConfig) -> Path:
    """Trains what `cfg` describes; returns the save_pretrained directory."""
    pl.seed_everything(cfg.seed, workers=True)
    system, datamodule, trainer = build(cfg)
    if cfg.get("num_threads") is not None:
        torch.set_num_threads(cfg.num_threads)
    datamodule.setup("fit")  # reads and checks every task's rows before training starts
    trainer.fit(system, datamodule=datamodule, ckpt_path=cfg.resume_from)
    return Path(cfg.model_dir)


@hydra.main(version_base=None, config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    model_dir = run(cfg)
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:
        print(f"saved the trained model to {model_dir.resolve()}")  # the CLI's result, not library logging


if __name__ == "__main__":
    main()
