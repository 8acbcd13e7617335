"""Profile one closed-loop LaMBO-2 round (surrogate training + LaMBO-2 + batch selection) on one device.

    python bench/profile_round.py --problem medium --device cuda --initial-size 512 --batch-size 128

Prints the wall seconds of each phase and the cProfile entries with the most cumulative time. Session 9, one H200
alone: a medium round of 128 from the 512 pool took 22.8 s, 16.2 s of it surrogate training (launch-bound: 232
backward passes at 32 ms); hard 20.9 s.
"""

from __future__ import annotations

import argparse
import ast
import cProfile
import pstats
import time

import torch

from cortex.design.loop import ClosedLoop, LoopConfig, build_problem


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="medium")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--initial-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("overrides", nargs="*", help="LoopConfig fields as key=value (Python literals)")
    args = parser.parse_args()
    extra = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        try:
            extra[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            extra[key] = value
    problem = build_problem(args.problem, seed=args.seed, initial_size=args.initial_size)
    config = LoopConfig(
        method="lambo", seed=args.seed, batch_size=args.batch_size, num_rounds=1, device=args.device, **extra
    )
    loop = ClosedLoop(problem, config, None)
    phases = {}
    for name in ("train_surrogate", "select_batch", "safe_fill", "prospective_quality"):
        original = getattr(loop, name)

        def timed(*a, _original=original, _name=name, **k):
            start = time.perf_counter()
            out = _original(*a, **k)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            phases[_name] = phases.get(_name, 0.0) + time.perf_counter() - start
            return out

        setattr(loop, name, timed)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    loop.run()
    profile.disable()
    total = time.perf_counter() - start
    print(f"round wall {total:.1f} s; phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)
    pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
