"""Runs one workload on THIS project's cortex, in its own Python (run.py starts it; never in the same process
as the original). Workload (a): the tutorial-3/4-shaped tree (conv1d root, or a transformer root, with a mask
corruption process; one regression and one MLM leaf) trained with `NeuralTreeSystem` on `TreeDataModule`
(tokenizing in DataLoader workers); (b): a transformer root of 12 blocks, width 768, length 256; (c): one
LaMBO-2 step (`LaMBO2.step`) over a population of GFP seeds.

    python ours_driver.py train --device cuda --root conv1d --width 128 --out result.json [--compile] [--devices 2]
        [--step-graph]
    python ours_driver.py design --device cpu --population 16 --length 237 --out result.json
"""

from __future__ import annotations

import argparse
import time

import torch
from common import SYNC_STEPS, design_seed, environment, load_gfp, make_timer, synchronize, write_json

import cortex  # this project (this file runs only in the project's environment)
from cortex.corruption import MaskCorruption
from cortex.data.datamodule import TreeDataModule
from cortex.data.tables import RandomSplit, TableData
from cortex.data.tokenization import ProteinTokenizer
from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.tree_objectives import AcquisitionObjective
from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.tasks.language_model import MLMTask
from cortex.tasks.regression import RegressionTask
from cortex.training import NeuralTreeSystem


def tree_config(root: str, width: int, num_blocks: int = 2, max_length: int = 256) -> NeuralTreeConfig:
    """The original's tutorial tree (spec 9.3) at feature width `width`: conv1d root (kernel 3) or transformer
    root (4 heads, or width // 64 heads from width 256 up), a linear property branch (width -> 8) and an
    identity generation branch (conv1d branches with no blocks), regressor + MLM leaves."""
    if root == "conv1d":
        root_config = {"type": "conv1d", "kernel_size": 3}
    elif root == "transformer":
        root_config = {"type": "transformer", "num_heads": max(4, width // 64)}
    else:
        raise ValueError(f"root={root!r}; expected 'conv1d' or 'transformer'")
    root_config.update(max_length=max_length, embed_dim=width, channel_dim=width, out_dim=width,
                       num_blocks=num_blocks)  # fmt: skip
    return NeuralTreeConfig(
        roots={"protein": root_config},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={
            "protein_property": {"type": "conv1d", "out_dim": 8, "channel_dim": width, "num_blocks": 0},
            "protein_generation": {"type": "conv1d", "out_dim": width, "channel_dim": width, "num_blocks": 0},
        },
        leaves={
            "log_fluorescence": {"type": "regressor", "branch": "protein_property", "out_dim": 1},
            "protein_seq": {"type": "mlm", "branch": "protein_generation", "root": "protein"},
        },
    )


def train(args: argparse.Namespace) -> dict:
    import lightning.pytorch as pl

    torch.set_float32_matmul_precision(args.matmul_precision)
    pl.seed_everything(0)
    model = NeuralTreeModel(tree_config(args.root, args.width, args.num_blocks, args.max_length))
    data = TableData(load_gfp(args.rows), split=RandomSplit({"train": 0.8, "test": 0.2}, seed=0))
    tasks = [
        RegressionTask("log_fluorescence", "log_fluorescence", {"protein": "sequence"}, ["log_brightness"],
                       data=data),
        MLMTask("protein_seq", "protein_seq", {"protein": "sequence"}, data=data),
    ]  # fmt: skip
    cuda = args.device.startswith("cuda")
    if args.step_graph_fresh_streams:
        from cortex.training.graphs import StepGraph

        StepGraph._side_stream = lambda self: torch.cuda.Stream()
    datamodule = TreeDataModule(
        tasks, model=model, batch_size=args.batch_size, num_workers=args.num_workers, seed=0,
        drop_last=True, pin_memory=cuda and args.pin_memory,
    )  # fmt: skip
    system = NeuralTreeSystem(
        model, tasks, {"protein": MaskCorruption(ProteinTokenizer().mask_token_id)},
        optim={"lr": 5e-3, "betas": (0.99, 0.999), "warmup_steps": 0, "schedule": "constant"},
        strategy=args.strategy, compile={"mode": args.compile_mode} if args.compile else False,
        step_graph=args.step_graph,
    )  # fmt: skip
    timer = make_timer(
        pl.Callback, args.device, args.warmup_steps, args.measure_steps, args.profile_steps,
        samples_in_batch=lambda batch: sum(b.root_inputs["protein"]["input_ids"].shape[0] for b in batch.values()),
        world_size=args.devices, cprofile_path=args.cprofile,
    )  # fmt: skip
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.warmup_steps + args.measure_steps + args.profile_steps + SYNC_STEPS + 1,
        max_epochs=1000,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(system, datamodule=datamodule)
    if trainer.global_rank != 0:
        return {}
    if "samples_per_s" not in timer.result:
        raise ValueError(
            f"our run ended after {timer.batches} steps, before the measurement window "
            f"({args.warmup_steps} + {args.measure_steps}); pass more --rows"
        )
    return timer.result


def design(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = NeuralTreeModel(tree_config("conv1d", args.width)).to(args.device).eval()
    if args.compile:
        model.compile()
    config = LaMBO2Config(
        num_mutations_per_step=args.num_mutations, max_guidance_updates=args.guidance_updates,
        guidance_step_size=0.1, kl_weight=args.kl_weight, feature_attr_temp=1.0, resample_edit_positions=True,
    )  # fmt: skip
    sampler = LaMBO2(model, AcquisitionObjective(["log_fluorescence"]), config=config)
    state = sampler.init_state([design_seed(args.length)] * args.population)
    state = sampler.step(state).state  # warm-up
    synchronize(args.device)
    cpu, start = time.process_time(), time.perf_counter()
    for _ in range(args.steps):
        state = sampler.step(state).state
    synchronize(args.device)
    elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu
    result = {
        "step_s": elapsed / args.steps,
        "steps_per_s": args.steps / elapsed,
        "step_cpu_s": cpu_elapsed / args.steps,  # process CPU time, all threads
        "population": args.population,
    }
    if args.device.startswith("cuda"):
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["train", "design"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", default="conv1d", choices=["conv1d", "transformer"])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num-blocks", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--strategy", default="joint", choices=["joint", "per_task"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--compile-mode", default="default", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)"
    )
    parser.add_argument(
        "--step-graph",
        action="store_true",
        help="capture each training step as a CUDA graph (NeuralTreeSystem)",
    )
    parser.add_argument(
        "--step-graph-fresh-streams",
        action="store_true",
        help="diagnostic: session 5's set-up, a new CUDA stream for every warm-up step and for the capture, instead "
        "of StepGraph's one side stream (an A/B of the step graph's peak memory in one job)",
    )
    parser.add_argument(
        "--pin-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cuda: DataLoader(pin_memory=...) (--no-pin-memory copies batches from shared memory directly)",
    )
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--measure-steps", type=int, default=20)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--matmul-precision", default="high")
    parser.add_argument(
        "--cprofile",
        default=None,
        help="write cProfile tables of the measured steps (host Python time) to this file",
    )
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--length", type=int, default=237)
    parser.add_argument("--num-mutations", type=int, default=8)
    parser.add_argument("--guidance-updates", type=int, default=4)
    parser.add_argument("--kl-weight", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available to this project's torch")
    if args.devices > 1 and not args.device.startswith("cuda"):
        raise ValueError(f"--devices {args.devices} needs --device cuda; got --device {args.device}")
    result = train(args) if args.workload == "train" else design(args)
    if not result:
        return  # a non-zero DDP rank: rank 0 writes the result
    result.update(side="ours", cortex_file=cortex.__file__, workload=args.workload, root=args.root,
                  width=args.width, device=args.device, compile=args.compile and args.compile_mode, devices=args.devices,
                  step_graph=args.step_graph, step_graph_fresh_streams=args.step_graph_fresh_streams,
                  pin_memory=args.pin_memory, num_workers=args.num_workers,
                  **environment(args.device))  # fmt: skip
    write_json(args.out, result)


if __name__ == "__main__":
    main()
