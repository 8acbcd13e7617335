"""Why a closed-loop run stalls: for each saved Ehrlich run state, how many sequences sit at its best value, and
how many single and double mutants of one of them improve on it (oracle values), split by how many of their
bigrams were never measured feasible (the loop's k-mer screen measures fully seen ones first).

    python bench/plateau_mutants.py RUN/states/easy_lambo_s0/loop_state.safetensors ... [--problem easy]

Prints one JSON row per state. Double mutants: every pair of positions and every pair of tokens (L^2 V^2 / 2
oracle calls, about 0.5 M for easy; seconds).
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from safetensors.torch import load_file

from cortex.design.loop import ClosedLoop, LoopConfig, build_problem, single_mutants


def plateau_row(problem, path: str) -> dict:
    tensors = load_file(path)
    loop = ClosedLoop(problem, LoopConfig(kmer_screen=2))
    loop.states, loop.values, loop.rounds = tensors["states"], tensors["values"], tensors["rounds"]
    values = torch.nan_to_num(loop.values, nan=-1.0, neginf=-1.0)
    best = float(values.max())
    incumbent = loop.states[values == best][0]  # the first measured at the best value
    length, size = problem.length, len(problem.alphabet)

    def improving(mutants: torch.Tensor) -> dict[int, int]:
        better = problem.black_box(problem.decode(mutants)).float() > best
        counts: dict[int, int] = {}
        for unseen in loop.unseen_kmers(mutants[better]).tolist():
            counts[unseen] = counts.get(unseen, 0) + 1
        return counts

    singles = single_mutants(incumbent, problem.is_mutable, size)
    doubles: dict[int, int] = {}
    tokens = torch.cartesian_prod(torch.arange(size), torch.arange(size))  # (V^2, 2)
    for i, j in itertools.combinations(range(length), 2):
        mutants = incumbent.repeat(tokens.shape[0], 1)
        mutants[:, i], mutants[:, j] = tokens[:, 0], tokens[:, 1]
        for unseen, count in improving(mutants).items():
            doubles[unseen] = doubles.get(unseen, 0) + count
    return {
        "state": path,
        "evaluations": int(values.numel()),
        "best": best,
        "at_best": int((values == best).sum()),
        "improving_singles_by_unseen_bigrams": improving(singles),
        "improving_doubles_by_unseen_bigrams": dict(sorted(doubles.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("states", nargs="+", help="loop_state.safetensors files of one Ehrlich problem")
    parser.add_argument("--problem", default="easy", help="the Ehrlich preset or name the runs used")
    args = parser.parse_args()
    problem = build_problem(args.problem, seed=0)
    for path in args.states:
        print(json.dumps(plateau_row(problem, path)), flush=True)


if __name__ == "__main__":
    main()
