"""`cortex-bench`: the closed-loop design benchmark over a method x problem x seed grid, configured with Hydra.

    cortex-bench                                                    # configs/bench/bench.yaml: CPU protocol
    cortex-bench problems=[easy] methods=[lambo,ga] seeds=[0,1] loop.num_rounds=2 loop.batch_size=32

Every (method, problem, seed) runs `cortex.design.loop.ClosedLoop` with the same budget, batch size and starting
data, resumable under output_dir/states/. Writes results.csv (one row per round: method, problem, seed, round,
num_evals, best_so_far, feasible_frac, num_proposed), best_so_far.png (median and min-max band over seeds of the
best-so-far value against evaluations, one panel per problem) and summary.json (per problem and method: median
best, mean feasible fraction of proposals, median evaluations to the problem's target value).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import statistics
import time

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from cortex.design.loop import METHODS, ClosedLoop, LoopConfig, build_problem

logger = logging.getLogger(__name__)
RESULT_COLUMNS: tuple[str, ...] = (
    "method",
    "problem",
    "seed",
    "round",
    "num_evals",
    "best_so_far",
    "feasible_frac",
    "num_proposed",
    "surrogate_spearman",
    "feasible_auc",
)


def _as_list(value, key: str) -> list:
    values = [value] if isinstance(value, str | int) else list(value)
    if not values:
        raise ValueError(f"bench {key} is empty; expected at least one entry")
    return values


def run_one(problem_name: str, method: str, seed: int, loop_cfg: dict, initial_size, output_dir: str) -> dict:
    """One (problem, method, seed) closed loop (resumable under output_dir/states/) -> its history and figures."""
    problem = build_problem(problem_name, seed=seed, initial_size=initial_size)
    config = LoopConfig(method=method, seed=seed, **loop_cfg)
    state_dir = os.path.join(output_dir, "states", f"{problem_name}_{method}_s{seed}")
    loop = ClosedLoop(problem, config, state_dir)
    start = time.process_time()
    result = loop.run()
    proposed = result.rounds > 0
    best = float(result.best_so_far[-1])
    logger.info(
        "%s %s seed %d: best %.4f after %d evaluations",
        problem_name,
        method,
        seed,
        best,
        result.values.numel(),
    )
    return {
        "history": result.history,
        "best": best,
        "feasible": float(torch.isfinite(result.values[proposed]).float().mean()),
        "to_target": None if problem.target_value is None else result.evals_to_reach(problem.target_value),
        "budget": loop.budget,
        "stop_reason": loop.stop_reason,
        "target_value": problem.target_value,
        "cpu_s": time.process_time() - start,
    }


def _run_one_in_worker(args: tuple) -> dict:
    torch.set_num_threads(args[-1])
    return run_one(*args[:-1])


def _mean_of(runs: list[dict], key: str) -> float | None:
    """Mean of a per-round history entry over every round of every run (None when no round has it)."""
    values = [row[key] for run in runs for row in run["history"] if row.get(key) is not None]
    return statistics.mean(values) if values else None


def run_bench(cfg: DictConfig) -> dict:
    """Runs the grid (in `num_workers` processes when > 1); returns the summary written to summary.json."""
    methods = _as_list(cfg.methods, "methods")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"bench methods {unknown} are unknown; expected names from {METHODS}")
    problems = _as_list(cfg.problems, "problems")
    seeds = [int(s) for s in _as_list(cfg.seeds, "seeds")]
    loop_cfg = OmegaConf.to_container(cfg.loop, resolve=True)
    num_threads, num_workers = int(cfg.num_threads), int(cfg.get("num_workers", 1))
    if num_workers < 1:
        raise ValueError(f"bench num_workers is {num_workers}; expected an int >= 1")
    output_dir = cfg.output_dir
    os.makedirs(output_dir, exist_ok=True)
    grid = [
        (p, m, s, loop_cfg, cfg.initial_size, output_dir) for p in problems for m in methods for s in seeds
    ]
    for _problem, method, seed, *_ in grid:  # bad settings fail before any run starts
        LoopConfig(method=method, seed=seed, **loop_cfg)
    if num_workers == 1:
        torch.set_num_threads(num_threads)
        runs = [run_one(*args) for args in grid]
    else:
        # Spawned workers (no forked torch thread pools), each with num_threads threads.
        context = multiprocessing.get_context("spawn")
        with context.Pool(num_workers) as pool:
            runs = pool.map(_run_one_in_worker, [(*args, num_threads) for args in grid], chunksize=1)
    rows, summary = [], {}
    for (problem_name, method, *_), run in zip(grid, runs, strict=True):
        rows.extend(run["history"])
        summary.setdefault(problem_name, {}).setdefault(method, []).append(run)
    for by_method in summary.values():
        for method, method_runs in by_method.items():
            to_target = [run["to_target"] for run in method_runs]
            by_method[method] = {
                "median_best": statistics.median(run["best"] for run in method_runs),
                "best_per_seed": [run["best"] for run in method_runs],
                "feasible_frac": statistics.mean(run["feasible"] for run in method_runs),
                "budget": method_runs[0]["budget"],
                "stop_reasons": sorted({run["stop_reason"] for run in method_runs}),
                "seeds": len(method_runs),
                "target_value": method_runs[0]["target_value"],
                "evals_to_target": to_target,
                # Runs that never reach the target count as infinitely many evaluations (median over all seeds).
                "median_evals_to_target": statistics.median(
                    [math.inf if r is None else r for r in to_target]
                ),
                "num_reached_target": sum(r is not None for r in to_target),
                "cpu_s_per_seed": [round(run["cpu_s"], 1) for run in method_runs],
                # LaMBO-2 rounds: the proposing surrogate's Spearman on its own measured batch (feasible rows).
                "surrogate_spearman_mean": _mean_of(method_runs, "surrogate_spearman"),
                "feasible_auc_mean": _mean_of(method_runs, "feasible_auc"),
            }
    table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    table.to_csv(os.path.join(output_dir, "results.csv"), index=False)
    plot_best_so_far(table, os.path.join(output_dir, "best_so_far.png"))
    with open(os.path.join(output_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary


def plot_best_so_far(table: pd.DataFrame, path: str) -> None:
    """PNG: per problem, the median (line) and min-max (band) over seeds of best-so-far against evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(table["problem"]))
    figure, axes = plt.subplots(1, len(problems), figsize=(4.5 * len(problems), 3.5), squeeze=False)
    for axis, problem in zip(axes[0], problems, strict=True):
        subset = table[table["problem"] == problem]
        for method, runs in subset.groupby("method", sort=False):
            grid = np.unique(runs["num_evals"].to_numpy())
            curves = []
            for _, run in runs.groupby("seed"):
                run = run.sort_values("num_evals")
                # Step function: best-so-far at each grid point is the last value at or before it.
                index = np.searchsorted(run["num_evals"].to_numpy(), grid, side="right") - 1
                values = run["best_so_far"].to_numpy()[np.clip(index, 0, None)]
                curves.append(np.where(index >= 0, values, np.nan))
            curves = np.clip(np.array(curves, dtype=float), -1e9, None)  # -inf (nothing feasible) drawn low
            axis.plot(grid, np.nanmedian(curves, axis=0), label=method)
            axis.fill_between(grid, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0), alpha=0.2)
        axis.set_title(problem)
        axis.set_xlabel("evaluations")
        axis.set_ylabel("best so far")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@hydra.main(config_path="../configs/bench", config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_bench(cfg)


if __name__ == "__main__":
    main()
