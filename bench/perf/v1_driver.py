"""Runs one workload on the ORIGINAL cortex (pytorch-cortex 0.0.4) through its public API, in the original's
own Python (run.py starts it with that interpreter and a clean sys.path: this project's src/ is never on it).
The tree is the shape of its tutorials 3/4 (spec 9.3, 12): Conv1dRoot with a mask corruption process, SumTrunk,
Conv1dBranch(num_blocks=0) per task group, a regression task and a denoising-LM task, built by
`SequenceModelTree.build_tree(cfg, skip_task_setup=True)` and fed in-memory rows through `NumpyDataset` +
`TaskDataModule.setup(dataset_kwargs=...)`; its DataLoader runs in process as it ships (tokenizing in forward).

    python v1_driver.py train --device cuda --width 128 --out result.json
    python v1_driver.py design --population 16 --length 237 --out result.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
import torch
from common import SYNC_STEPS, design_seed, environment, load_gfp, make_timer, write_json

import cortex  # the original package (this file runs only in the original's environment)


def tree_config(width: int, batch_size: int, kernel_size: int = 3, max_len: int = 256):
    from omegaconf import OmegaConf

    tokenizer = {"_target_": "cortex.tokenization.ProteinSequenceTokenizerFast"}

    def data_module(drop_last: bool) -> dict:
        return {
            "_target_": "cortex.data.data_module.TaskDataModule",
            "_recursive_": False,
            "batch_size": batch_size,
            "lengths": [1.0, 0.0],
            "drop_last": drop_last,
            "num_workers": 0,
            "dataset_config": {"_target_": "cortex.data.dataset.NumpyDataset", "train": "???"},
        }

    return OmegaConf.create(
        {
            "tree": {
                "_target_": "cortex.model.tree.SequenceModelTree",
                "_recursive_": False,
                "fit_cfg": {
                    "reinitialize_roots": False,
                    "linear_probing": False,
                    "weight_averaging": None,
                    "optimizer": {"_target_": "torch.optim.Adam", "lr": 5e-3, "weight_decay": 0.0,
                                  "betas": [0.99, 0.999], "fused": False},
                    "lr_scheduler": {"_target_": "transformers.get_cosine_schedule_with_warmup",
                                     "num_warmup_steps": 1, "num_training_steps": 2},
                },
            },
            "roots": {
                "protein_seq": {
                    "_target_": "cortex.model.root.Conv1dRoot",
                    "corruption_process": {"_target_": "cortex.corruption.MaskCorruptionProcess"},
                    "tokenizer_transform": {"_target_": "cortex.transforms.HuggingFaceTokenizerTransform",
                                            "tokenizer": tokenizer},
                    "max_len": max_len, "embed_dim": width, "channel_dim": width, "out_dim": width,
                    "num_blocks": 2, "kernel_size": kernel_size,
                }
            },
            "trunk": {"_target_": "cortex.model.trunk.SumTrunk"},
            "branches": {
                "protein_property": {"_target_": "cortex.model.branch.Conv1dBranch", "out_dim": 8,
                                     "channel_dim": width, "num_blocks": 0, "kernel_size": kernel_size},
                "protein_generation": {"_target_": "cortex.model.branch.Conv1dBranch", "out_dim": width,
                                       "channel_dim": width, "num_blocks": 0, "kernel_size": kernel_size},
            },
            "tasks": {
                "protein_property": {
                    "log_fluorescence": {
                        "_target_": "cortex.task.RegressionTask",
                        "input_map": {"protein_seq": ["tokenized_seq"]},
                        "outcome_cols": ["log_fluorescence"],
                        "root_key": "protein_seq",
                        "ensemble_size": 1,
                        "data_module": data_module(drop_last=False),
                    }
                },
                "protein_generation": {
                    "protein_seq": {
                        "_target_": "cortex.task.DenoisingLanguageModelTask",
                        "tokenizer": tokenizer,
                        "input_map": {"protein_seq": ["tokenized_seq"]},
                        "root_key": "protein_seq",
                        "ensemble_size": 1,
                        "data_module": data_module(drop_last=True),
                    }
                },
            },
            "data_dir": ".",
        }
    )  # fmt: skip


def build(width: int, batch_size: int, device: str, data: dict | None):
    import hydra

    cfg = tree_config(width, batch_size)
    model = hydra.utils.instantiate(cfg.tree)
    task_dict = model.build_tree(cfg, skip_task_setup=True)
    if data is not None:
        for task in task_dict.values():
            task.data_module.setup(stage="test", dataset_kwargs={"data": data})
            task.data_module.setup(stage="fit", dataset_kwargs={"data": data})
    return model.to(device), task_dict


def train(args: argparse.Namespace) -> dict:
    import lightning as L
    from lightning.pytorch import Callback

    torch.set_float32_matmul_precision(args.matmul_precision)
    L.seed_everything(0)
    frame = load_gfp(args.rows)
    data = {
        "tokenized_seq": np.array([" ".join(s) for s in frame["sequence"]]),
        "log_fluorescence": frame["log_brightness"].to_numpy(dtype=np.float64),
    }
    model, _ = build(args.width, args.batch_size, "cpu", data)
    timer = make_timer(
        Callback, args.device, args.warmup_steps, args.measure_steps, args.profile_steps,
        samples_in_batch=lambda batch: sum(int(b["batch_size"]) for b in batch.values()),
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu",
        devices=1,
        # Lightning counts optimizer steps, and the original takes one per leaf per batch (spec 6.3).
        max_steps=(args.warmup_steps + args.measure_steps + args.profile_steps + SYNC_STEPS + 1)
        * len(model.leaf_nodes),
        max_epochs=1000,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(model, train_dataloaders=model.get_dataloader("train"))
    if "samples_per_s" not in timer.result:
        raise ValueError(
            f"the original's run ended after {timer.batches} steps, before the measurement window "
            f"({args.warmup_steps} + {args.measure_steps}); pass more --rows"
        )
    return timer.result


def design(args: argparse.Namespace) -> dict:
    from cortex.acquisition import GraphNEI, get_graph_nei_runtime_kwargs
    from cortex.optim.generative import LaMBO

    torch.manual_seed(0)
    model, _ = build(args.width, args.population, "cpu", None)
    model.eval()
    seeds = np.array([" ".join(design_seed(args.length))] * args.population)
    with contextlib.redirect_stdout(io.StringIO()):  # the original prints progress
        runtime = get_graph_nei_runtime_kwargs(
            model, seeds, objectives=["log_fluorescence"], constraints=None, scaling=None
        )
        objective = GraphNEI(objectives=["log_fluorescence"], constraints=None, scaling=None, **runtime)
        root = model.root_nodes["protein_seq"]
        tok_idxs = root.eval_transform(seeds)
        optimizer = LaMBO(
            params=tok_idxs,
            is_mutable=root.tokenizer.get_corruptible_mask(tok_idxs),
            model=model,
            objective=objective,
            max_num_solutions=args.population,
            num_mutations_per_step=args.num_mutations,
            max_guidance_updates=args.guidance_updates,
            guidance_step_size=0.1,
            guidance_layer="trunk",
            kl_weight=args.kl_weight,
            feature_attr_temp=1.0,
            domain_name="protein_seq",
            resample_edit_positions=True,
        )
        optimizer.step()  # warm-up
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(args.steps):
            optimizer.step()
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu
    return {
        "step_s": elapsed / args.steps,
        "steps_per_s": args.steps / elapsed,
        "step_cpu_s": cpu_elapsed / args.steps,  # process CPU time, all threads
        "population": args.population,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["train", "design"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--measure-steps", type=int, default=20)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--matmul-precision", default="high")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--length", type=int, default=237)
    parser.add_argument("--num-mutations", type=int, default=8)
    parser.add_argument("--guidance-updates", type=int, default=4)
    parser.add_argument("--kl-weight", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available to the original's torch")
    result = train(args) if args.workload == "train" else design(args)
    result.update(
        side="original",
        cortex_file=cortex.__file__,
        workload=args.workload,
        width=args.width,
        device=args.device if args.workload == "train" else "cpu",
        **environment(args.device),
    )
    write_json(args.out, result)


if __name__ == "__main__":
    main()
