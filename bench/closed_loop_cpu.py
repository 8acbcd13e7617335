"""Turns cortex-bench summaries into bench/results/ehrlich.json and bench/results/gb1.json (issue 7 keys).

The CPU-sized protocol this repository records (run with `cortex-bench` on the shared 2-core box; the sizes
are what fitted there, see bench/results/*.json "protocol"):
    cortex-bench problems=[easy] methods=[lambo,ga,random] seeds=[0,1,2] loop.batch_size=64 \
        loop.num_rounds=6 num_workers=2 hydra.run.dir=<a>
    cortex-bench problems=[gb1] ... hydra.run.dir=<b>
    python bench/closed_loop_cpu.py --summary <a>/summary.json <b>/summary.json --write-results
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib

from cortex.design.loop import single_mutants  # the loop's enumeration (tests reach it here too)

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def convert(summaries: list[dict]) -> tuple[dict, dict]:
    merged = {problem: methods for summary in summaries for problem, methods in summary.items()}
    ehrlich = {}
    for level in ("easy", "medium", "hard"):
        if level not in merged:
            continue
        lambo, ga = merged[level]["lambo"], merged[level]["ga"]
        ehrlich[level] = {
            "lambo_median_best": lambo["median_best"],
            "ga_median_best": ga["median_best"],
            "lambo_feasible_frac": lambo["feasible_frac"],
            "budget": lambo["budget"],
            "seeds": lambo["seeds"],
            **(
                {
                    "random_median_best": merged[level]["random"]["median_best"],
                    "random_best_per_seed": merged[level]["random"]["best_per_seed"],
                }
                if "random" in merged[level]
                else {}
            ),
            "ga_feasible_frac": ga["feasible_frac"],
            "lambo_best_per_seed": lambo["best_per_seed"],
            "ga_best_per_seed": ga["best_per_seed"],
            "ga_seeds": ga["seeds"],
            **({"lambo_cpu_s_per_seed": lambo["cpu_s_per_seed"]} if "cpu_s_per_seed" in lambo else {}),
            **(
                {"lambo_surrogate_spearman_mean": lambo["surrogate_spearman_mean"]}
                if lambo.get("surrogate_spearman_mean") is not None
                else {}
            ),
        }
    gb1 = {}
    if "gb1" in merged:
        lambo, ga = merged["gb1"]["lambo"], merged["gb1"]["ga"]
        gb1 = {
            # null = the median run never reached the top 1 % within the budget.
            "lambo_median_evals_to_top1pct": _finite(lambo["median_evals_to_target"]),
            "ga_median_evals_to_top1pct": _finite(ga["median_evals_to_target"]),
            "seeds": lambo["seeds"],
            "budget": lambo["budget"],
            "lambo_evals_to_top1pct": lambo["evals_to_target"],
            "ga_evals_to_top1pct": ga["evals_to_target"],
            "top1pct_fitness": lambo["target_value"],
            "lambo_median_best": lambo["median_best"],
            "ga_median_best": ga["median_best"],
        }
    return ehrlich, gb1


def _state_files(state_dirs: list[str], state_file: str):
    """Yields ((problem, method, seed), path) for `<dir>/states/<problem>_<method>_s<seed>/<state_file>`."""
    for directory in state_dirs:
        for path in sorted(pathlib.Path(directory).glob(f"states/*/{state_file}")):
            problem, rest = path.parent.name.split("_", 1)
            method, seed = rest.rsplit("_s", 1)
            yield (problem, method, int(seed)), path


def load_runs(state_dirs: list[str], started_only: bool = False) -> dict:
    """(problem, method, seed) -> ((N,) values, (N,) rounds) from `<dir>/states/<problem>_<method>_s<seed>/`;
    with `started_only`, runs that finished no round (only the starting set) are left out: a run that waited
    for its turn in a deadline-stopped process would otherwise cut every run at the starting set."""
    from safetensors.torch import load_file

    from cortex.design.loop import STATE_FILE

    runs = {}
    for key, path in _state_files(state_dirs, STATE_FILE):
        tensors = load_file(str(path))
        if started_only and not bool((tensors["rounds"] > 0).any()):
            continue
        runs[key] = (tensors["values"], tensors["rounds"])
    return runs


def load_histories(state_dirs: list[str]) -> dict:
    """(problem, method, seed) -> the per-round history saved in each run state's metadata."""
    from safetensors import safe_open

    from cortex.design.loop import STATE_FILE

    histories = {}
    for key, path in _state_files(state_dirs, STATE_FILE):
        with safe_open(str(path), framework="pt") as handle:
            histories[key] = json.loads(handle.metadata()["history"])
    return histories


def plot_states(state_dirs: list[str], budget: int | None, path: str, started_only: bool = False) -> None:
    """best_so_far PNG (cortex-bench's plot: median and min-max over seeds) from run states cut at `budget`."""
    import pandas as pd
    import torch

    from cortex.cli.bench import RESULT_COLUMNS, plot_best_so_far

    runs = load_runs(state_dirs, started_only)
    cut = budget or min(values.numel() for values, _ in runs.values())
    rows = []
    for (problem, method, seed), (values, rounds) in sorted(runs.items()):
        best = torch.nan_to_num(values[:cut], nan=-math.inf).cummax(0).values
        for index in range(best.numel()):
            rows.append(
                (
                    method,
                    problem,
                    seed,
                    int(rounds[index]),
                    index + 1,
                    float(best[index]),
                    None,
                    None,
                    None,
                    None,
                )
            )
    plot_best_so_far(pd.DataFrame(rows, columns=list(RESULT_COLUMNS)), path)


def summaries_from_states(state_dirs: list[str], budget: int | None, started_only: bool = False) -> dict:
    """cortex-bench-style summary from loop state files (`<dir>/states/<problem>_<method>_s<seed>/`), every run
    cut at `budget` evaluations (None: the fewest any run reached, so unfinished runs compare at equal
    budget)."""
    import statistics

    import torch

    from cortex.design.loop import build_problem

    runs = load_runs(state_dirs, started_only)
    histories = load_histories(state_dirs)
    cut = budget or min(values.numel() for values, _ in runs.values())
    summary: dict = {}
    for (problem, method, seed), (values, rounds) in sorted(runs.items()):
        values, rounds = values[:cut], rounds[:cut]
        best = torch.nan_to_num(values, nan=-math.inf).cummax(0).values
        target = build_problem(problem, seed=seed).target_value
        hit = (best >= target).nonzero() if target is not None else torch.empty(0, 1)
        entry = summary.setdefault(problem, {}).setdefault(method, {"runs": []})
        entry["runs"].append(
            {
                "best": float(best[-1]),
                "feasible": float(torch.isfinite(values[rounds > 0]).float().mean()),
                "to_target": int(hit[0, 0]) + 1 if hit.numel() else None,
                "target": target,
                # Rounds measured within the cut: the proposing surrogate's Spearman on its batch.
                "spearman": [
                    row["surrogate_spearman"]
                    for row in histories[(problem, method, seed)]
                    if row.get("surrogate_spearman") is not None and row["num_evals"] <= cut
                ],
            }
        )
    for methods in summary.values():
        for method, entry in methods.items():
            runs_ = entry["runs"]
            to_target = [r["to_target"] for r in runs_]
            methods[method] = {
                "median_best": statistics.median(r["best"] for r in runs_),
                "best_per_seed": [r["best"] for r in runs_],
                "feasible_frac": statistics.mean(r["feasible"] for r in runs_),
                "budget": cut,
                "seeds": len(runs_),
                "target_value": runs_[0]["target"],
                "evals_to_target": to_target,
                "median_evals_to_target": statistics.median(math.inf if r is None else r for r in to_target),
                "surrogate_spearman_mean": (
                    statistics.mean(x for r in runs_ for x in r["spearman"])
                    if any(r["spearman"] for r in runs_)
                    else None
                ),
            }
    return summary


def rank_improving_mutants(state_path: str, cut: int, overrides: dict, train_seed: int) -> dict:
    """How the loop's surrogate ranks what would improve the incumbent: trains it (LoopConfig(**overrides)) on the
    first `cut` evaluations of a saved run and scores every single mutant of the best measured sequence; among the
    mutants with a finite oracle value (feasible, measured), the improving ones (value above the incumbent's) get
    their 0-based ranks by the ensemble-mean prediction (`mean_ranks`) and by the loop's acquisition, fitted on
    the LaMBO-2 seed pool (`acq_ranks`); `*_pct` is the mean rank / number of feasible mutants (0 = top, 0.5 =
    chance); `spearman` is between the mean prediction and the oracle over the feasible mutants."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from cortex.design.loop import ClosedLoop, LoopConfig, build_problem, spearman
    from cortex.design.tree_objectives import AcquisitionObjective

    with safe_open(state_path, framework="pt") as handle:
        problem_name = handle.metadata()["problem"]
    tensors = load_file(state_path)
    if not 0 < cut <= tensors["values"].numel():
        raise ValueError(
            f"cut is {cut} for {state_path}; expected 1..{tensors['values'].numel()} evaluations"
        )
    problem = build_problem(problem_name, initial_size=int((tensors["rounds"] == 0).sum()))
    loop = ClosedLoop(problem, LoopConfig(**overrides))
    loop.states, loop.values, loop.rounds = (tensors[k][:cut] for k in ("states", "values", "rounds"))
    measured = torch.nan_to_num(loop.values, nan=-math.inf)
    incumbent = float(measured.max())
    mutants = single_mutants(loop.states[measured.argmax()], problem.is_mutable, len(problem.alphabet))
    true = problem.black_box(problem.decode(mutants)).float()
    feasible = torch.isfinite(true)
    mutants, true = mutants[feasible], true[feasible]
    improving = true > incumbent
    model = loop.train_surrogate(train_seed)
    leaves = ["objective", "feasible"] if problem.learn_feasibility else ["objective"]

    acquisition = AcquisitionObjective([("objective", 0)], leaves[1:])
    pool = loop.config.lambo_seed_pool or max(1, loop.config.batch_size // 2)
    acquisition.fit(
        loop.leaf_outputs(
            model, loop.states[torch.sort(measured, descending=True, stable=True).indices[:pool]], leaves
        )
    )
    out = loop.leaf_outputs(model, mutants, leaves)
    mean = out["objective"].loc.mean(0)[:, 0]  # (M,)
    row = {
        "state": state_path,
        "cut": cut,
        "train_seed": train_seed,
        "incumbent": incumbent,
        "num_feasible": int(feasible.sum()),
        "num_improving": int(improving.sum()),
        "spearman": spearman(mean, true),
    }
    for name, score in (("mean", mean), ("acq", acquisition(out))):
        order = torch.argsort(score.float(), descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(order.numel())
        row[f"{name}_ranks"] = sorted(ranks[improving].tolist())
        row[f"{name}_pct"] = (
            float(ranks[improving].float().mean() / order.numel()) if improving.any() else None
        )
    return row


def merge_levels(recorded: dict, measured: dict, record_as: str | None = None) -> dict:
    """ehrlich.json content after a measurement: each measured level replaces the recorded one, or, with
    `record_as`, is stored as `recorded[level][record_as]` next to the level's recorded keys (a second protocol
    of the same level, e.g. a larger budget, without losing the headline figures)."""
    if record_as is None:
        return {**recorded, **measured}
    merged = dict(recorded)
    for level, entry in measured.items():
        merged[level] = {**recorded.get(level, {}), record_as: entry}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--summary", nargs="+", default=[], help="summary.json files written by cortex-bench")
    parser.add_argument(
        "--states", nargs="+", default=[], help="cortex-bench output dirs: read their run states"
    )
    parser.add_argument("--budget", type=int, default=None, help="with --states: cut every run here")
    parser.add_argument("--plot", default=None, help="with --states: write the best-so-far PNG here")
    parser.add_argument(
        "--write-results", action="store_true", help="write {ehrlich,gb1}.json to --results-dir"
    )
    parser.add_argument(
        "--results-dir", default=str(RESULTS), help="where --write-results writes (bench/results)"
    )
    parser.add_argument(
        "--started-only", action="store_true", help="with --states: leave out runs that finished no round"
    )
    parser.add_argument("--protocol", default=None, help="text stored as 'protocol' in every Ehrlich level")
    parser.add_argument(
        "--record-as",
        default=None,
        help="with --write-results: store each measured Ehrlich level as this sub-record of the recorded level "
        "(e.g. budget_1664), keeping the level's recorded keys",
    )
    parser.add_argument(
        "--rank-mutants",
        nargs="+",
        default=[],
        metavar="STATE:CUT",
        help="loop_state.safetensors files, each cut at a number of evaluations: rank the incumbent's improving "
        "single mutants with the surrogate trained on the cut (prints one JSON row per state and train seed)",
    )
    parser.add_argument(
        "--rank-config", default="{}", help="with --rank-mutants: LoopConfig overrides (JSON)"
    )
    parser.add_argument("--rank-seeds", nargs="+", type=int, default=[1, 2], help="with --rank-mutants")
    args = parser.parse_args()
    if args.rank_mutants:
        rows = []
        for spec in args.rank_mutants:
            path, _, cut = spec.rpartition(":")
            if not path or not cut.isdigit():
                raise ValueError(f"--rank-mutants entry {spec!r}; expected STATE:CUT (a path and an integer)")
            for seed in args.rank_seeds:
                rows.append(rank_improving_mutants(path, int(cut), json.loads(args.rank_config), seed))
                print(json.dumps(rows[-1]), flush=True)
        scored = [r for r in rows if r["mean_pct"] is not None]
        print(
            json.dumps(
                {
                    key: sum(r[key] for r in scored) / len(scored)
                    for key in ("spearman", "mean_pct", "acq_pct")
                }
                | {"rows": len(scored), "config": json.loads(args.rank_config)}
            )
        )
        return
    summaries = [json.loads(pathlib.Path(p).read_text()) for p in args.summary]
    if args.states:
        summaries.append(summaries_from_states(args.states, args.budget, args.started_only))
        if args.plot:
            plot_states(args.states, args.budget, args.plot, args.started_only)
    ehrlich, gb1 = convert(summaries)
    if args.protocol:
        for level in ehrlich.values():
            level["protocol"] = args.protocol
    print(json.dumps({"ehrlich": ehrlich, "gb1": gb1}, indent=2))
    if args.write_results:
        results = pathlib.Path(args.results_dir)
        results.mkdir(parents=True, exist_ok=True)
        if ehrlich:
            # Levels not measured by this call keep their recorded entries (issue 7 needs all three keys).
            path = results / "ehrlich.json"
            recorded = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps(merge_levels(recorded, ehrlich, args.record_as), indent=2) + "\n")
        if gb1:
            (results / "gb1.json").write_text(json.dumps(gb1, indent=2) + "\n")


if __name__ == "__main__":
    main()
