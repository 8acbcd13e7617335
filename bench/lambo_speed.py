"""LaMBO-2 step time on the perf workload (c) of bench/perf (the original's tutorial-4 settings): a conv1d tree
(kernel 3, width 32) with regressor + MLM leaves, 16 wild-type GFP seeds cut to 237 residues, 8 mutations per
step, 4 guidance updates, step size 0.1, kl_weight 0.25, resampled edit positions, log-EI objective. The
original takes 7.3 s per step on 2 CPU cores (issue 6).

Reports wall and CPU (process) seconds per step with the exact windowed / incremental pseudo-log-likelihood (the
tree's receptive radius is finite) and with full-length occlusions (checking both give the same population), and
the PLL of the final population timed three ways: windowed, full-length batched occlusions, and the original's one
forward per position.

    python bench/lambo_speed.py --device cpu --threads 2 --output bench/results/lambo_speed.json
    python bench/lambo_speed.py --device cuda --population 128
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

import pandas as pd
import torch

from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.state import DesignState
from cortex.design.tree_objectives import AcquisitionObjective
from cortex.model.configuration_neural_tree import NeuralTreeConfig
from cortex.model.modeling_neural_tree import NeuralTreeModel

ORIGINAL_STEP_SECONDS_CPU = (
    7.3  # issue 6: the original, 16 designs of length 237, kl_weight 0.25, 2 CPU cores
)


def build_model(width: int) -> NeuralTreeModel:
    """bench/perf's tutorial tree: conv1d root (kernel 3), linear property / identity generation branches."""
    torch.manual_seed(0)
    config = NeuralTreeConfig(
        roots={"protein": {"type": "conv1d", "kernel_size": 3, "max_length": 256, "embed_dim": width,
                           "channel_dim": width, "out_dim": width, "num_blocks": 2}},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"protein_property": {"type": "conv1d", "out_dim": 8, "channel_dim": width, "num_blocks": 0},
                  "protein_generation": {"type": "conv1d", "out_dim": width, "channel_dim": width,
                                         "num_blocks": 0}},
        leaves={"log_fluorescence": {"type": "regressor", "branch": "protein_property", "out_dim": 1},
                "protein_seq": {"type": "mlm", "branch": "protein_generation", "root": "protein"}},
    )  # fmt: skip
    return NeuralTreeModel(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--length", type=int, default=237)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--guidance-updates", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--output", default=None, help="write the JSON here (e.g. bench/results/lambo_speed.json)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = build_model(args.width).to(args.device)
    if args.compile:
        model.compile()
    sequence = pd.read_csv("data/gfp_sarkisyan2016.csv.gz", nrows=1)["sequence"].iloc[0][: args.length]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def time_steps(pll_window: bool) -> tuple[float, float, float, LaMBO2, DesignState]:
        """(wall s, CPU s, accept rate) per step after a warm-up step, the sampler and its last state."""
        config = LaMBO2Config(
            num_mutations_per_step=8, max_guidance_updates=args.guidance_updates, guidance_step_size=0.1,
            kl_weight=0.25, feature_attr_temp=1.0, resample_edit_positions=True, pll_window=pll_window,
        )  # fmt: skip
        sampler = LaMBO2(model, AcquisitionObjective(["log_fluorescence"]), config=config)
        state = sampler.init_state([sequence] * args.population)
        state = sampler.step(state).state  # warm-up
        sync()
        cpu, start = time.process_time(), time.perf_counter()
        accepted = 0.0
        for _ in range(args.steps):
            output = sampler.step(state)
            state = output.state
            accepted += output.metrics["accept_rate"]
        sync()
        wall = (time.perf_counter() - start) / args.steps
        return wall, (time.process_time() - cpu) / args.steps, accepted / args.steps, sampler, state

    load_before = os.getloadavg()[0]
    step_s, step_cpu_s, accept_rate, sampler, state = time_steps(pll_window=True)
    full_s, full_cpu_s, full_accept_rate, _, full_state = time_steps(pll_window=False)
    ids, mask = state.input_ids, state.attention_mask
    excluded = ~(sampler.corruptible_tokens[ids] & mask.bool())
    start = time.perf_counter()
    sampler.pseudo_log_likelihood(ids, mask, excluded)
    sync()
    pll_windowed_s = time.perf_counter() - start
    start = time.perf_counter()
    full_sampler = LaMBO2(
        model, sampler.objective, config=dataclasses.replace(sampler.config, pll_window=False)
    )
    full_sampler.pseudo_log_likelihood(ids, mask, excluded)
    sync()
    pll_batched_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        for j in range(ids.shape[1]):  # the original: one forward per position
            occluded = ids.clone()
            occluded[:, j] = sampler.mask_token_id
            model(input_ids=occluded, attention_mask=mask, leaves=["protein_seq"])
    sync()
    pll_loop_s = time.perf_counter() - start
    result = {
        "step_seconds_cpu": step_cpu_s if args.device == "cpu" else None,
        "step_seconds_wall": step_s,
        "population": args.population,
        "length": args.length,
        "original_step_seconds_cpu": ORIGINAL_STEP_SECONDS_CPU,
        "speedup_vs_original": ORIGINAL_STEP_SECONDS_CPU / step_s if args.device == "cpu" else None,
        "guidance_updates": args.guidance_updates,
        "mean_accept_rate": accept_rate,
        "receptive_radius": sampler.pll_radius,
        "full_length_pll": {
            "step_seconds_wall": full_s,
            "step_seconds_cpu": full_cpu_s if args.device == "cpu" else None,
            "mean_accept_rate": full_accept_rate,
            "same_population": bool(torch.equal(state.input_ids, full_state.input_ids)),
        },
        "pll_windowed_seconds": pll_windowed_s,
        "pll_batched_seconds": pll_batched_s,
        "pll_per_position_seconds": pll_loop_s,
        "machine": {
            "device": str(args.device),
            "torch_threads": torch.get_num_threads(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "processor": platform.processor() or platform.machine(),
            "load_average_1min_before": load_before,
            "load_average_1min_after": os.getloadavg()[0],
            "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        },
    }
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
