"""LaMBO-2 step time: population P of length-L designs, kl_weight 0.25 (the original takes 7.3 s per step for
16 designs of length 237 on 2 CPU cores). Also times the pseudo-log-likelihood both ways: one batched forward
over all occlusions (ours) and the original's one forward per position.

    python bench/lambo_speed.py --device cpu --population 16
    python bench/lambo_speed.py --device cuda --population 128
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd
import torch

from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.tree_objectives import LeafMean
from cortex.model.configuration_neural_tree import NeuralTreeConfig
from cortex.model.modeling_neural_tree import NeuralTreeModel


def build_model(length: int, width: int) -> NeuralTreeModel:
    torch.manual_seed(0)
    config = NeuralTreeConfig(
        roots={"protein": {"type": "conv1d", "max_length": length, "embed_dim": width, "channel_dim": width,
                           "out_dim": width}},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"property": {"type": "conv1d", "out_dim": width, "channel_dim": width, "ensemble_size": 2},
                  "generation": {"type": "conv1d", "out_dim": width, "channel_dim": width}},
        leaves={"bind": {"type": "regressor", "branch": "property"},
                "protein_mlm": {"type": "mlm", "branch": "generation", "root": "protein"}},
    )  # fmt: skip
    return NeuralTreeModel(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--length", type=int, default=237)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--guidance-updates", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    model = build_model(args.length, args.width).to(args.device)
    if args.compile:
        model.compile()
    sequence = pd.read_csv("data/gfp_sarkisyan2016.csv.gz", nrows=1)["sequence"].iloc[0][: args.length]
    config = LaMBO2Config(
        kl_weight=0.25, max_guidance_updates=args.guidance_updates, num_mutations_per_step=2
    )
    sampler = LaMBO2(model, LeafMean("bind"), config=config)
    state = sampler.init_state([sequence] * args.population)
    sampler.step(state)  # warm-up
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        state = sampler.step(state).state
    sync()
    step_s = (time.perf_counter() - start) / args.steps

    ids, mask = state.input_ids, state.attention_mask
    excluded = ~(sampler.corruptible_tokens[ids] & mask.bool())
    start = time.perf_counter()
    sampler.pseudo_log_likelihood(ids, mask, excluded)
    sync()
    pll_batched_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for j in range(ids.shape[1]):  # the original: one forward per position
            occluded = ids.clone()
            occluded[:, j] = sampler.mask_token_id
            model(input_ids=occluded, attention_mask=mask, leaves=["protein_mlm"])
    sync()
    pll_loop_s = time.perf_counter() - start
    print(json.dumps({
        "device": str(args.device), "population": args.population, "length": args.length,
        "guidance_updates": args.guidance_updates, "step_s": step_s, "pll_batched_s": pll_batched_s,
        "pll_per_position_s": pll_loop_s, "threads": torch.get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
