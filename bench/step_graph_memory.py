"""Peak GPU memory of one training step of workload (a) (issue 8), eager and captured by `StepGraph`, phase by phase.

    python bench/step_graph_memory.py --width 128 --out $OUT/step_graph_memory.json      # CUDA only

For the tutorial tree at `--width`, batch 128 a task, on real GFP rows: the peak `torch.cuda.max_memory_allocated`
above the resident state (parameters, gradients, Adam state, batch) of an eager step with the per-task backward
and with the summed one, of the capture and of a replay, for two stream set-ups: "shared" (StepGraph's: warm-ups
and captures on one side stream) and "fresh" (session 5's: each warm-up and the capture on a new stream). Blocks
whose free the capture deferred (state `active_pending_free` in the allocator's snapshot: freed inside the capture
but marked as used by a second stream) are summed and grouped by the Python frame that allocated them.
A diagnostic of where a step graph's extra memory comes from, not a speed benchmark.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "perf"))
from common import load_gfp
from ours_driver import tree_config

from cortex.corruption import MaskCorruption
from cortex.data.datamodule import TreeDataModule
from cortex.data.tables import RandomSplit, TableData
from cortex.data.tokenization import ProteinTokenizer
from cortex.model import NeuralTreeModel
from cortex.tasks.language_model import MLMTask
from cortex.tasks.regression import RegressionTask
from cortex.training import NeuralTreeSystem
from cortex.training.graphs import StepGraph

MIB = 2**20


def peak_above(base: int, fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / MIB


def pending_frees(snapshot: dict) -> tuple[float, list[tuple[str, float]]]:
    """(MiB of blocks whose free is deferred, [(allocating frame, MiB)] largest first) from a memory snapshot."""
    by_frame: dict[str, int] = {}
    for segment in snapshot["segments"]:
        for block in segment["blocks"]:
            if block["state"] != "active_pending_free":
                continue
            frames = [
                f
                for f in block.get("frames", [])
                if "cortex" in f["filename"] or "torch/autograd" in f["filename"]
            ]
            where = (
                f"{frames[0]['filename'].rsplit('/', 2)[-1]}:{frames[0]['line']} {frames[0]['name']}"
                if frames
                else "?"
            )
            by_frame[where] = by_frame.get(where, 0) + block["size"]
    ranked = sorted(by_frame.items(), key=lambda kv: -kv[1])
    return sum(by_frame.values()) / MIB, [(where, size / MIB) for where, size in ranked[:8]]


def measure(step: StepGraph, batch: dict, mode: str) -> dict[str, float]:
    """Peaks (MiB above the resident state) of an eager step, the capture (+ its replay) and a replay."""
    step(batch)  # eager warm-up: gradients exist from here on
    base = torch.cuda.memory_allocated()
    found = {f"resident_mib_{mode}": base / MIB}
    found[f"eager_step_peak_mib_{mode}"] = peak_above(base, lambda: step._run_body(batch, 1.0))
    torch.cuda.memory._record_memory_history(max_entries=100_000)
    found[f"capture_peak_mib_{mode}"] = peak_above(base, lambda: step(batch))  # captures, then replays
    found[f"after_capture_mib_{mode}"] = (torch.cuda.memory_allocated() - base) / MIB
    found[f"pending_free_mib_{mode}"], found[f"pending_free_by_frame_{mode}"] = pending_frees(
        torch.cuda.memory._snapshot()
    )
    torch.cuda.memory._record_memory_history(enabled=None)
    found[f"replay_peak_mib_{mode}"] = peak_above(torch.cuda.memory_allocated(), lambda: step(batch))
    found[f"reserved_mib_{mode}"] = torch.cuda.memory_reserved() / MIB
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise ValueError("bench/step_graph_memory.py needs a CUDA device")
    torch.manual_seed(0)
    model = NeuralTreeModel(tree_config("conv1d", args.width)).cuda()
    data = TableData(load_gfp(1024), split=RandomSplit({"train": 0.8, "test": 0.2}, seed=0))
    tasks = [
        RegressionTask("log_fluorescence", "log_fluorescence", {"protein": "sequence"}, ["log_brightness"],
                       data=data),
        MLMTask("protein_seq", "protein_seq", {"protein": "sequence"}, data=data),
    ]  # fmt: skip
    system = NeuralTreeSystem(
        model, tasks, {"protein": MaskCorruption(ProteinTokenizer().mask_token_id)}
    ).cuda()
    datamodule = TreeDataModule(tasks, model=model, batch_size=128, seed=0, drop_last=True)
    datamodule.setup("fit")
    system.fit_tasks({name: frames["train"] for name, frames in datamodule.frames.items()})
    batch, _, _ = next(iter(datamodule.train_dataloader()))
    batch = {name: b.to("cuda") for name, b in batch.items()}
    params = dict(model.named_parameters())
    task_losses = {task.name: functools.partial(system.weighted_task_loss, task) for task in tasks}
    result: dict[str, object] = {"width": args.width}
    for streams in ("shared", "fresh"):
        for sequential in (True, False):
            step = StepGraph(task_losses, params, sequential=sequential, warmup_steps=1)
            if streams == "fresh":  # session 5's set-up: a new stream for every warm-up and for the capture
                step._side_stream = lambda: torch.cuda.Stream()
            result.update(measure(step, batch, f"{'sequential' if sequential else 'sum'}_{streams}"))
            del step
            for p in params.values():
                p.grad = None
            torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
