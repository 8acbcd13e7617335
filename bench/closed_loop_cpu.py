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
                {"random_median_best": merged[level]["random"]["median_best"]}
                if "random" in merged[level]
                else {}
            ),
            "ga_feasible_frac": ga["feasible_frac"],
            "lambo_best_per_seed": lambo["best_per_seed"],
            "ga_best_per_seed": ga["best_per_seed"],
            **({"lambo_cpu_s_per_seed": lambo["cpu_s_per_seed"]} if "cpu_s_per_seed" in lambo else {}),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--summary", nargs="+", required=True, help="summary.json files written by cortex-bench"
    )
    parser.add_argument("--write-results", action="store_true", help="write bench/results/{ehrlich,gb1}.json")
    args = parser.parse_args()
    ehrlich, gb1 = convert([json.loads(pathlib.Path(p).read_text()) for p in args.summary])
    print(json.dumps({"ehrlich": ehrlich, "gb1": gb1}, indent=2))
    if args.write_results:
        if ehrlich:
            (RESULTS / "ehrlich.json").write_text(json.dumps(ehrlich, indent=2) + "\n")
        if gb1:
            (RESULTS / "gb1.json").write_text(json.dumps(gb1, indent=2) + "\n")


if __name__ == "__main__":
    main()
