"""Config migration: an original cortex training config (spec section 9) -> a `cortex-train` config.

The original composes `roots`, `trunk`, `branches`, `tree.fit_cfg` (optimizer, lr_scheduler) and
`tasks.<group>.<task>` (task class, `ensemble_size`, `data_module`) plus global settings. This module maps every
key it understands onto this project's layout (roots/trunk/branches/tasks/data/corruption/optim/trainer/...,
see src/cortex/configs/train.yaml) and reports each key as:

* "mapped": same meaning under a new key;
* "changed": mapped with a different value or behaviour (the note says which);
* "unmapped": no counterpart here (the note says why and what to use instead);
* "action": the user must change the migrated config before training (the original's datasets download TAPE
  data that is not bundled, so each data entry must be swapped for a table here).

    result = migrate_v1_config(compose_v1_config("train_protein_model.yaml"))
    result.config  # dict, written as YAML by `cortex-migrate config`
    result.report  # list[ReportEntry]
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cortex.model.conversion import V1_TASK_LEAF_TYPES, load_v1_config, v1_tree_layout

STATUSES: tuple[str, ...] = ("mapped", "changed", "unmapped", "action")
NUMERICS: tuple[str, ...] = ("v1", "fixed")
V1_TASK_CLASSES: dict[str, str] = {
    "RegressionTask": "cortex.tasks.RegressionTask",
    "ClassificationTask": "cortex.tasks.ClassificationTask",
    "DenoisingLanguageModelTask": "cortex.tasks.MLMTask",
    "AutoregressiveLanguageModelTask": "cortex.tasks.CausalLMTask",
}
# Node fields that only reproduce the original's numerics (dropped with numerics="fixed").
V1_NUMERICS_FIELDS: tuple[str, ...] = ("block", "mask_padding_in_attention", "mask_block_input")
# Global keys of the original that configure logging, checkpoint paths or design, with what replaces them.
V1_UNMAPPED_GLOBALS: dict[str, str] = {
    "wandb_mode": "logging: choose a `logger` (csv, tensorboard, wandb)",
    "wandb_host": "logging: choose a `logger`",
    "project_name": "logging: choose a `logger`",
    "exp_name": "runs are named by Hydra's output directory",
    "job_name": "runs are named by Hydra's output directory",
    "timestamp": "runs are named by Hydra's output directory",
    "log_dir": "logs go to `output_dir`",
    "ckpt_name": "the trained model is written to `model_dir` (save_pretrained), checkpoints to output_dir",
    "ckpt_file": "the trained model is written to `model_dir` (save_pretrained); resume with `resume_from`",
    "ckpt_cfg": "the composed config is saved by Hydra in the run directory",
    "save_ckpt": "the model is always saved (SavePretrained callback)",
    "data_dir": "data entries name their tables (`data.<entry>.source`)",
    "dataset_root_dir": "data entries name their tables (`data.<entry>.source`)",
    "download_datasets": "tables are local files; nothing is downloaded",
    "warnings_filter": "use Python's -W or PYTHONWARNINGS",
    "dtype": "unused in the original as well",
    "__version__": "set by wandb_setup in the original; not needed",
    "train_on_everything": "a no-op in the original (spec A22); use the data entry's split",
    "linear_probing": "not supported; freeze roots in Python (model.roots.requires_grad_(False))",
    "guidance_objective": "design configs are `cortex-design` configs (src/cortex/configs/design)",
    "optim": "the LaMBO settings map to `cortex-design` (design/design.yaml), not to training",
    "num_steps": "a design setting: `cortex-design` num_steps",
    "num_samples": "a design setting: `cortex-design`",
}


@dataclass
class ReportEntry:
    """One original key and what became of it."""

    status: str
    old_key: str
    new_key: str | None
    note: str = ""

    def __str__(self) -> str:
        target = f" -> {self.new_key}" if self.new_key else ""
        note = f": {self.note}" if self.note else ""
        return f"[{self.status}] {self.old_key}{target}{note}"


@dataclass
class MigrationResult:
    """The migrated `cortex-train` config (plain dict) and the report of every original key."""

    config: dict[str, Any]
    report: list[ReportEntry] = field(default_factory=list)

    def entries(self, status: str) -> list[ReportEntry]:
        return [entry for entry in self.report if entry.status == status]


def compose_v1_config(
    path: str | os.PathLike, config_dir: str | os.PathLike | None = None, overrides: list[str] | None = None
) -> DictConfig:
    """An original config file as a DictConfig. A primary config with a `defaults` list is composed with Hydra
    against `config_dir` (default: the file's folder, as the original's `cortex/config/hydra`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"original config {str(path)!r} is not a file")
    raw = OmegaConf.load(path)
    if not isinstance(raw, DictConfig):
        raise ValueError(f"{str(path)!r} holds a {type(raw).__name__}; expected a mapping (a Hydra config)")
    if "defaults" not in raw and not overrides:
        return raw
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    directory = Path(config_dir) if config_dir is not None else path.parent
    if not directory.is_dir():
        raise ValueError(f"config directory {str(directory)!r} is not a directory")
    GlobalHydra.instance().clear()
    relative = path.resolve().relative_to(directory.resolve()).with_suffix("")
    with initialize_config_dir(config_dir=str(directory.resolve()), version_base=None):
        return compose(config_name=str(relative), overrides=list(overrides or []))


def _snake(name: str) -> str:
    name = name.removesuffix("Dataset")
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _get(cfg: DictConfig, dotted: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, dotted, default=default, throw_on_missing=False)
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def migrate_v1_config(cfg: DictConfig | Mapping[str, Any], numerics: str = "v1") -> MigrationResult:
    """Migrates a composed original config. numerics: "v1" keeps the original's layer numerics through the
    model's flags (block=cortex_v1, unmasked pads; inputs then padded to max_length as the original),
    "fixed" uses this project's defaults. Raises ValueError for a config that is not an original one."""
    if numerics not in NUMERICS:
        raise ValueError(f"numerics={numerics!r}; expected one of {NUMERICS}")
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    v1 = load_v1_config(cfg)
    layout = v1_tree_layout(cfg)
    report: list[ReportEntry] = []

    def add(status: str, old: str, new: str | None, note: str = "") -> None:
        report.append(ReportEntry(status, old, new, note))

    model = layout.config
    roots, branches = dict(model.roots), dict(model.branches)
    if numerics == "fixed":
        for node in [*roots.values(), *branches.values()]:
            for name in V1_NUMERICS_FIELDS:
                node.pop(name, None)
    for name, root in v1["roots"].items():
        add("mapped", f"roots.{name}", f"roots.{name}", f"type {roots[name]['type']}")
        for key in root:
            if key in ("_target_", "tokenizer_transform", "corruption_process"):
                continue
            new = {"max_len": "max_length", "dropout_prob": "dropout"}.get(key, key)
            if new in roots[name]:
                add("mapped", f"roots.{name}.{key}", f"roots.{name}.{new}")
            else:
                add("unmapped", f"roots.{name}.{key}", None, "not an architecture setting here")
        add("mapped", f"roots.{name}.tokenizer_transform", f"roots.{name}.tokenizer", "protein")
        if numerics == "v1":
            flags = {k: roots[name][k] for k in V1_NUMERICS_FIELDS if k in roots[name]}
            add("changed", f"roots.{name}", f"roots.{name}", f"original numerics kept: {flags}")
    corruption: dict[str, Any] = {}
    for name, root in v1["roots"].items():
        process = (root.get("corruption_process") or {}).get("_target_", "")
        if process.endswith("MaskCorruptionProcess"):
            corruption[name] = {
                "name": "mask",
                "schedule": "cosine",
                "num_timesteps": 1000,
                "concentration1": 3.0,
                "concentration0": 1.0,
            }
            add(
                "mapped",
                f"roots.{name}.corruption_process",
                f"corruption.{name}",
                "mask, cosine, T=1000, Beta(3,1)",
            )
        elif process.endswith("GaussianCorruptionProcess"):
            corruption[name] = {"name": "gaussian"}
            add("mapped", f"roots.{name}.corruption_process", f"corruption.{name}", "gaussian")
        elif process:
            add("unmapped", f"roots.{name}.corruption_process", None, f"{process} has no counterpart")
    add("mapped", "trunk", "trunk", "sum of root features")
    for note in layout.notes:
        key, _, text = note.partition(": ")
        add("unmapped" if "ignored" in text else "changed", key, None if "ignored" in text else key, text)
    for name in branches:
        group = layout.branch_groups[name]
        add("mapped", f"branches.{group}", f"branches.{name}", f"type {branches[name]['type']}")

    tasks: dict[str, Any] = {}
    data: dict[str, Any] = {}
    batch_sizes: list[int] = []
    num_workers: list[int] = []
    for group, group_tasks in v1["tasks"].items():
        for task_key, task in group_tasks.items():
            where = f"tasks.{group}.{task_key}"
            class_name = task["_target_"].rsplit(".", 1)[1]
            leaf = dict(model.leaves[task_key])
            input_map = task.get("input_map") or {}
            inputs = {}
            for root, columns in input_map.items():
                columns = [columns] if isinstance(columns, str) else list(columns)
                if len(columns) != 1:
                    raise ValueError(
                        f"{where}.input_map.{root}={columns}; one column per root is supported (the original "
                        "flattens several into 2B sequences, spec 8.4)"
                    )
                inputs[root] = columns[0]
            new_task: dict[str, Any] = {
                "_target_": V1_TASK_CLASSES[class_name],
                "name": task_key,
                "leaf": task_key,
                "inputs": inputs,
            }
            add("mapped", f"{where}._target_", f"tasks.{task_key}.task._target_", V1_TASK_CLASSES[class_name])
            add("mapped", f"{where}.input_map", f"tasks.{task_key}.task.inputs")
            add("mapped", f"{where}.ensemble_size", f"branches.{leaf['branch']}.ensemble_size")
            smoothing = "noise_level" if task.get("corrupt_train_inputs") else 0.0
            if class_name == "RegressionTask":
                new_task["targets"] = list(task["outcome_cols"])
                new_task["label_smoothing"] = smoothing
                add("mapped", f"{where}.outcome_cols", f"tasks.{task_key}.task.targets")
                add("mapped", f"{where}.nominal_label_var", f"tasks.{task_key}.leaf.nominal_label_var")
            elif class_name == "ClassificationTask":
                new_task.update(
                    label=task["class_col"], num_classes=task["num_classes"], label_smoothing=smoothing
                )
                add("mapped", f"{where}.class_col", f"tasks.{task_key}.task.label")
            if "corrupt_train_inputs" in task:
                add(
                    "mapped",
                    f"{where}.corrupt_train_inputs",
                    f"tasks.{task_key}.task.label_smoothing",
                    str(smoothing),
                )
            if task.get("corrupt_inference_inputs") and V1_TASK_LEAF_TYPES[class_name] in (
                "regressor",
                "classifier",
            ):
                add(
                    "unmapped",
                    f"{where}.corrupt_inference_inputs",
                    None,
                    "property leaves are evaluated clean here",
                )
            if task.get("corruption_process") is not None:
                add(
                    "unmapped",
                    f"{where}.corruption_process",
                    None,
                    "target-side substitution of MLM targets is not supported",
                )
            for key in ("root_key", "tokenizer"):
                if key in task:
                    add(
                        "mapped",
                        f"{where}.{key}",
                        f"tasks.{task_key}.leaf.root",
                        "from the task's input root",
                    )
            module = task.get("data_module") or {}
            dataset = module.get("dataset_config") or {}
            dataset_class = str(dataset.get("_target_", "unknown")).rsplit(".", 1)[-1]
            entry = _snake(dataset_class)
            columns = [
                *inputs.values(),
                *new_task.get("targets", []),
                *([new_task["label"]] if "label" in new_task else []),
            ]
            if entry not in data:
                data[entry] = {
                    "_target_": "cortex.data.TableData",
                    "source": "???",
                    "validation_fraction": 0.1,
                    "seed": 0,
                }
                if module.get("balance_train_partition"):
                    data[entry]["balance_by"] = module["balance_train_partition"]
                    add("mapped", f"{where}.data_module.balance_train_partition", f"data.{entry}.balance_by")
                add(
                    "action",
                    f"{where}.data_module.dataset_config",
                    f"data.{entry}",
                    f"the original's {dataset_class} (TAPE download) is not bundled: swap data.{entry} for a "
                    f"bundled table entry (e.g. src/cortex/configs/data/gfp.yaml) holding columns {columns}",
                )
            else:
                add(
                    "mapped",
                    f"{where}.data_module.dataset_config",
                    f"data.{entry}",
                    "shared with another task",
                )
            if isinstance(module.get("batch_size"), int):
                batch_sizes.append(module["batch_size"])
            if isinstance(module.get("num_workers"), int):
                num_workers.append(module["num_workers"])
            add("mapped", f"{where}.data_module.batch_size", "datamodule.batch_size")
            for key in ("lengths", "drop_last", "train_on_everything", "seed"):
                if key in module:
                    add("unmapped", f"{where}.data_module.{key}", None, "splits are set on the data entry")
            tasks[task_key] = {"task": new_task, "leaf": leaf, "data": entry}

    fit_cfg = _get(cfg, "tree.fit_cfg", {}) or {}
    optimizer = fit_cfg.get("optimizer") or {}
    scheduler = fit_cfg.get("lr_scheduler") or {}
    optim = {
        "name": "adamw" if str(optimizer.get("_target_", "")).endswith("AdamW") else "adam",
        "lr": float(optimizer.get("lr", 1e-3)),
        "betas": [float(b) for b in optimizer.get("betas", [0.9, 0.999])],
        "eps": float(optimizer.get("eps", 1e-8)),
        "weight_decay": float(optimizer.get("weight_decay", 0.0)),
        "warmup_steps": int(scheduler.get("num_warmup_steps", 0)),
        "interval": "epoch",
        "schedule": "cosine" if scheduler else "constant",
    }
    for key in ("lr", "betas", "weight_decay"):
        if key in optimizer:
            add("mapped", f"tree.fit_cfg.optimizer.{key}", f"optim.{key}")
    if scheduler:
        add("mapped", "tree.fit_cfg.lr_scheduler.num_warmup_steps", "optim.warmup_steps", "warm-up epochs")
        add(
            "mapped",
            "tree.fit_cfg.lr_scheduler.num_training_steps",
            "trainer.max_epochs",
            "cosine over the epochs, stepped at epoch start; the last epoch runs at lr 0 (spec A7)",
        )
    if fit_cfg.get("weight_averaging"):
        add(
            "changed",
            "tree.fit_cfg.weight_averaging",
            "callbacks.ema",
            "dead code in the original (A9); EMA here",
        )
    if fit_cfg.get("linear_probing"):
        add("unmapped", "tree.fit_cfg.linear_probing", None, V1_UNMAPPED_GLOBALS["linear_probing"])
    add("unmapped", "tree._target_", None, "the model is always a NeuralTreeModel")

    trainer_cfg = _get(cfg, "trainer", {}) or {}
    max_epochs = trainer_cfg.get("max_epochs", _get(cfg, "max_epochs", 1))
    accelerator = trainer_cfg.get("accelerator", "auto")
    trainer = {
        "_target_": "lightning.pytorch.Trainer",
        "accelerator": "auto",
        "devices": trainer_cfg.get("devices", 1),
        "max_epochs": max_epochs,
        "precision": "32-true",
        "num_sanity_val_steps": trainer_cfg.get("num_sanity_val_steps", 0),
        "log_every_n_steps": 10,
        "use_distributed_sampler": False,
        "default_root_dir": "${output_dir}",
    }
    add("mapped", "trainer.max_epochs", "trainer.max_epochs")
    add("changed", "trainer.accelerator", "trainer.accelerator", f"{accelerator} -> auto (CPU when no GPU)")
    add("changed", "trainer._target_", "trainer._target_", "lightning.Trainer -> lightning.pytorch.Trainer")
    if max_epochs == 0:
        add("changed", "max_epochs", "trainer.max_epochs", "0 epochs trains nothing; raise it to train")

    seed = _get(cfg, "random_seed", _get(cfg, "seed", 0))
    add("mapped", "random_seed" if "random_seed" in cfg else "seed", "seed")
    for key in cfg:
        if key in V1_UNMAPPED_GLOBALS:
            add("unmapped", str(key), None, V1_UNMAPPED_GLOBALS[key])
    reported = {entry.old_key.split(".")[0] for entry in report}
    for key in cfg:
        if key not in reported and key not in ("defaults", "tree", "fit", "batch_size"):
            add(
                "unmapped",
                str(key),
                None,
                "interpolation variable or setting with no counterpart (values were resolved)",
            )
    add(
        "changed",
        "training step",
        "strategy",
        "per_task: one optimizer step per task (the original steps per leaf member)",
    )

    pad = max(root["max_length"] for root in roots.values()) if numerics == "v1" else 8
    config = {
        "roots": roots,
        "trunk": dict(model.trunk),
        "branches": branches,
        "tasks": tasks,
        "data": data,
        "corruption": corruption,
        "optim": optim,
        "trainer": trainer,
        "callbacks": {
            "save_pretrained": {"_target_": "cortex.training.SavePretrained", "dirpath": "${model_dir}"},
        },
        "logger": {
            "csv": {
                "_target_": "lightning.pytorch.loggers.CSVLogger",
                "save_dir": "${output_dir}",
                "name": "csv",
            }
        },
        "seed": int(seed) if seed is not None else 0,
        "strategy": "per_task",
        "task_weights": None,
        "gradient_clip_val": None,
        "compile": False,
        "resume_from": None,
        "output_dir": "${hydra:runtime.output_dir}",
        "model_dir": "${output_dir}/model",
        "datamodule": {
            "batch_size": max(batch_sizes) if batch_sizes else 32,
            "eval_batch_size": 128,
            "num_workers": max(num_workers) if num_workers else 0,
            "mode": "min_size",
            "eval_mode": "sequential",
            "pad_to_multiple_of": pad,
            "seed": "${seed}",
        },
    }
    if numerics == "v1":
        add(
            "changed",
            "roots.*.max_len",
            "datamodule.pad_to_multiple_of",
            f"{pad}: inputs padded to max_len as the original (with unmasked pads, features depend on the padding)",
        )
    if len(set(batch_sizes)) > 1:
        add(
            "changed",
            "tasks.*.data_module.batch_size",
            "datamodule.batch_size",
            f"one size for all tasks: {max(batch_sizes)}",
        )
    return MigrationResult(config, report)
