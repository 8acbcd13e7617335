"""RBD binding + expression quality benchmark (issue 4) on the position-held-out split of configs/data/rbd.yaml.

Compares, on the same split (whole sites held out: train / validation / test sites disjoint), a two-task tree
(rbd_bind + rbd_expr leaves, ensembles of `--ensemble-size` members) with two single-task trees and a one-hot ridge
floor. Reports test and validation Spearman per target, and the two-task ensemble's Gaussian NLL and 90% interval
coverage (means over both targets, in original units). Writes bench/results/rbd.json.

Model selection is on the VALIDATION split only. A layout is a named list of Hydra overrides. With `--select`
every candidate layout (LAYOUTS below, or `--layouts FILE.json`) is trained on the selection seeds
0..`--selection-seeds`-1; the two-task tree takes the two-task layout with the best mean validation Spearman
(mean over seeds of the mean over both targets) and each single-task tree, separately per target, the
single-task layout with the best mean validation Spearman on its target; both sides get the same number of
candidates and seeds. The chosen layouts are then trained on the remaining seeds up to `--seeds`-1 and the
headline keys are means over seeds 0..`--seeds`-1 of their TEST Spearman. Without `--select` there is one
layout (`--two-task-overrides` for the two-task tree, nothing more for the single-task trees).

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_rbd.py --select --seeds 8 --selection-seeds 2 \\
        --max-epochs 5 --ensemble-size 4 --num-threads 1 --reuse                          # CPU
    python bench/train_rbd.py --select --seeds 16 --selection-seeds 4 --accelerator gpu \\
        --num-threads 2 --parallel --workers 6 --reuse                                    # GPU host

`--reuse` loads a finished run's metrics from <output-dir>/<run>/result.json when its overrides and training
arguments are the same, so an interrupted benchmark continues where it stopped. A previous bench/results/rbd.json
is kept: its "variants" carry over and its headline is added to them under `--previous-label`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from ridge_onehot import ridge_floor
from train_common import arguments, hardware, split_frames, train_and_test

DATA = Path(__file__).resolve().parents[1] / "data" / "rbd_starr2020_bind_expr.csv.gz"
TARGETS = {"rbd_bind": "bind_delta_log10Ka", "rbd_expr": "expr_delta_meanF"}
SHORT = {"rbd_bind": "bind", "rbd_expr": "expr"}

# Candidate layouts for --select. Both sides get three: mean vs max pooling of the property branch, plus one
# capacity change each: the two-task tree a second branch for expression (a copy of `property`: same pooling,
# width and ensemble size; root and trunk stay shared), the single-task tree a branch with twice the output width
# (64: its one block has the parameters of the two-task tree's two 32-wide blocks). With one block the branch's
# widths are trunk -> out_dim (channel_dim is unused), so out_dim is the width that matters.
LAYOUTS: dict[str, dict[str, list[str]]] = {
    "two_task": {
        "mean_shared_branch": ["branches.property.pooling=mean"],
        "max_shared_branch": ["branches.property.pooling=max"],
        "max_branch_per_task": [
            "branches.property.pooling=max",
            "+branches.expr=${branches.property}",
            "tasks.rbd_expr.leaf.branch=expr",
        ],
    },
    "single_task": {
        "mean": ["branches.property.pooling=mean"],
        "max": ["branches.property.pooling=max"],
        "max_wide": ["branches.property.pooling=max", "branches.property.out_dim=64"],
    },
}
# Result keys of a previous headline carried into "variants" when a new run replaces it.
HEADLINE_KEYS = (
    "bind_spearman",
    "expr_spearman",
    "single_task_bind_spearman",
    "single_task_expr_spearman",
    "ensemble_nll",
    "coverage_90",
    "per_seed",
    "seeds",
    "command",
    "note",
    "layout",
    "selection",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(__doc__, default_epochs=8)
    parser.add_argument("--ensemble-size", type=int, default=4)
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="headline seeds 0..N-1 (config `seed`: init, batch order, corruption; the split stays fixed); "
        "results report per-seed values and compare the means",
    )
    parser.add_argument("--select", action="store_true", help="pick layouts on validation (see above)")
    parser.add_argument(
        "--layouts",
        default=None,
        help='candidate layouts for --select as JSON {"two_task": {name: [overrides]}, "single_task": {...}} '
        "(default: LAYOUTS of this script)",
    )
    parser.add_argument(
        "--selection-seeds",
        type=int,
        default=None,
        help="seeds 0..K-1 score the candidate layouts on validation (K <= --seeds; they count in the headline; "
        "default min(2, --seeds))",
    )
    parser.add_argument(
        "--two-task-overrides",
        nargs="*",
        default=[],
        help="without --select: Hydra overrides for the two-task run only, e.g. a branch per task: "
        "'+branches.expr=${branches.property}' tasks.rbd_expr.leaf.branch=expr",
    )
    parser.add_argument("--data", default=str(DATA), help="the RBD table (default: the bundled file)")
    parser.add_argument("--reuse", action="store_true", help="reuse finished runs' result.json (see above)")
    parser.add_argument("--parallel", action="store_true", help="train the trees in worker processes")
    parser.add_argument("--workers", type=int, default=3, help="worker processes with --parallel")
    parser.add_argument(
        "--label", default=None, help="a name for this run's layout choice, stored as `label`"
    )
    parser.add_argument(
        "--previous-label",
        default=None,
        help="the key under which the previous results file's headline is kept in variants "
        "(default: its `label`, else 'previous headline')",
    )
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds}; expected at least 1")
    if args.selection_seeds is None:
        args.selection_seeds = min(2, args.seeds)
    if not 1 <= args.selection_seeds <= args.seeds:
        raise ValueError(f"--selection-seeds={args.selection_seeds}; expected 1..--seeds ({args.seeds})")
    if args.ensemble_size < 1:
        raise ValueError(f"--ensemble-size={args.ensemble_size}; expected at least 1")
    if args.workers < 1:
        raise ValueError(f"--workers={args.workers}; expected at least 1")
    if args.layouts is not None and not args.select:
        raise ValueError(f"--layouts={args.layouts} is only used with --select; add --select")
    if args.select and args.two_task_overrides:
        raise ValueError(
            f"--two-task-overrides={args.two_task_overrides} with --select; put them in a --layouts file instead"
        )
    return args


def load_layouts(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """Reads and checks a layouts file: {"two_task": {name: [override, ...]}, "single_task": {...}}, each side
    with at least one layout."""
    layouts = json.loads(Path(path).read_text())
    if not isinstance(layouts, dict) or set(layouts) != {"two_task", "single_task"}:
        keys = sorted(layouts) if isinstance(layouts, dict) else type(layouts).__name__
        raise ValueError(
            f"layouts file {path}: top level {keys}; expected the keys ['single_task', 'two_task']"
        )
    for side, candidates in layouts.items():
        if not isinstance(candidates, dict) or not candidates:
            raise ValueError(
                f"layouts file {path}: {side!r} is {candidates!r}; expected {{name: [overrides]}}"
            )
        for name, overrides in candidates.items():
            if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
                raise ValueError(
                    f"layouts file {path}: {side}.{name} is {overrides!r}; expected a list of override strings"
                )
    return layouts


def finite(value: float) -> float:
    """Spearman of constant predictions is undefined (NaN); it carries no rank information and counts as 0."""
    return 0.0 if math.isnan(value) else value


def choose(scores: Mapping[str, Sequence[float]]) -> str:
    """The layout with the highest mean score (NaN counts as 0); ties go to the first layout in order."""
    if not scores:
        raise ValueError("no layouts to choose from; expected at least one")
    means = {}
    for name, values in scores.items():
        if not values:
            raise ValueError(f"layout {name!r} has no scores; expected one per selection seed")
        means[name] = sum(finite(value) for value in values) / len(values)
    best = max(means.values())
    return next(name for name, mean in means.items() if mean == best)


def run_key(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """What a run's result depends on besides the code: its overrides and the training arguments."""
    return {
        "overrides": overrides,
        "extra_overrides": list(args.overrides),
        "accelerator": args.accelerator,
        "devices": args.devices,
        "precision": args.precision,
        "max_epochs": args.max_epochs,
        "batch_size": args.batch_size,
        "max_minutes": args.max_minutes,
    }


def train_or_reuse(run_name: str, args: argparse.Namespace, overrides: list[str]) -> tuple[dict, float]:
    """({task: test metrics with "validation"}, training minutes) of one tree; with args.reuse a finished
    run with the same run_key is read back from <output-dir>/<run_name>/result.json instead of retrained."""
    path = Path(args.output_dir) / run_name / "result.json"
    key = run_key(args, overrides)
    if args.reuse and path.exists():
        stored = json.loads(path.read_text())
        if stored["key"] == key:
            return stored["metrics"], stored["minutes"]
    metrics, minutes, _ = train_and_test(run_name, args, overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "metrics": metrics, "minutes": minutes}, indent=2) + "\n")
    return metrics, minutes


def run_all(
    jobs: Mapping[tuple, tuple[str, list[str]]],
    args: argparse.Namespace,
    train: Callable[[str, argparse.Namespace, list[str]], tuple[dict, float]] = train_or_reuse,
) -> dict[tuple, tuple[dict, float]]:
    """Runs every job {key: (run name, overrides)} in order, or in --workers spawned processes with --parallel."""
    if not args.parallel:
        return {key: train(run_name, args, overrides) for key, (run_name, overrides) in jobs.items()}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = {
            key: pool.submit(train, run_name, args, overrides) for key, (run_name, overrides) in jobs.items()
        }
        return {key: future.result() for key, future in futures.items()}


def tree_overrides(args: argparse.Namespace, side: str, layout: list[str], target: str | None) -> list[str]:
    """Overrides of one tree: data source and ensemble size, the layout, and the tasks of `side`."""
    base = [f"branches.property.ensemble_size={args.ensemble_size}", "data.rbd.source=" + str(args.data)]
    tasks = "tasks=[rbd_bind,rbd_expr]" if side == "two_task" else f"tasks=[{target}]"
    return [*base, tasks, *layout]


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the candidate and chosen layouts and returns the results dict (see the module docstring)."""
    start = time.perf_counter()
    if args.select:
        layouts = load_layouts(args.layouts) if args.layouts else LAYOUTS
    else:
        layouts = {"two_task": {"given": list(args.two_task_overrides)}, "single_task": {"given": []}}
    seeds = list(range(args.seeds))
    selection_seeds = seeds[: args.selection_seeds]
    trees = [("two_task", None), *(("single_task", target) for target in TARGETS)]

    def job(side: str, target: str | None, name: str, seed: int) -> tuple[str, list[str]]:
        overrides = tree_overrides(args, side, layouts[side][name], target)
        return f"{target or side}/{name}/seed{seed}", [*overrides, f"seed={seed}"]

    # 1. Every candidate layout on the selection seeds; choose on validation Spearman only.
    jobs = {
        (target or side, name, seed): job(side, target, name, seed)
        for seed in selection_seeds
        for side, target in trees
        for name in layouts[side]
    }
    done = run_all(jobs, args)

    def scores(tree: str, name: str, split_of: Callable[[dict], dict]) -> dict[str, list[float]]:
        tasks = list(TARGETS) if tree == "two_task" else [tree]
        return {
            task: [split_of(done[tree, name, s][0][task])["spearman"] for s in selection_seeds]
            for task in tasks
        }

    selection: dict[str, Any] = {
        "criterion": "mean over the selection seeds of the validation Spearman (two-task: mean over both targets; "
        "single-task: its own target); NaN counts as 0; test Spearman is listed but not used",
        "seeds": selection_seeds,
        "layouts": layouts,
    }
    chosen = {}
    for tree in ("two_task", *TARGETS):
        side = "two_task" if tree == "two_task" else "single_task"
        validation = {name: scores(tree, name, lambda m: m["validation"]) for name in layouts[side]}
        # Per selection seed, the mean over the tree's targets.
        criterion = {
            name: [
                sum(finite(v) for v in seed_values) / len(per_task) for seed_values in zip(*per_task.values())
            ]
            for name, per_task in validation.items()
        }
        chosen[tree] = choose(criterion)
        selection[tree] = {
            "validation_spearman": {
                name: {**validation[name], "score": sum(criterion[name]) / len(criterion[name])}
                for name in layouts[side]
            },
            "test_spearman_not_used": {name: scores(tree, name, lambda m: m) for name in layouts[side]},
            "chosen": chosen[tree],
        }

    # 2. The chosen layouts on the remaining seeds.
    rest = {
        (target or side, chosen[target or side], seed): job(side, target, chosen[target or side], seed)
        for seed in seeds[len(selection_seeds) :]
        for side, target in trees
    }
    done.update(run_all(rest, args))

    two_task = {s: done["two_task", chosen["two_task"], s][0] for s in seeds}
    single = {s: {t: done[t, chosen[t], s][0][t] for t in TARGETS} for s in seeds}
    per_seed: dict[str, list[float]] = {}
    for target, short in SHORT.items():
        per_seed[f"{short}_spearman"] = [two_task[s][target]["spearman"] for s in seeds]
        per_seed[f"single_task_{short}_spearman"] = [single[s][target]["spearman"] for s in seeds]
        per_seed[f"{short}_validation_spearman"] = [
            two_task[s][target]["validation"]["spearman"] for s in seeds
        ]
        per_seed[f"single_task_{short}_validation_spearman"] = [
            single[s][target]["validation"]["spearman"] for s in seeds
        ]
    per_seed["ensemble_nll"] = [sum(two_task[s][t]["nll"] for t in TARGETS) / len(TARGETS) for s in seeds]
    per_seed["coverage_90"] = [
        sum(two_task[s][t]["coverage_90"] for t in TARGETS) / len(TARGETS) for s in seeds
    ]
    per_seed["two_task_train_minutes"] = [done["two_task", chosen["two_task"], s][1] for s in seeds]
    means = {key: sum(values) / len(values) for key, values in per_seed.items()}

    # The rows of each split as every run saw them (GroupSplit seeded in the data config, not by `seed`).
    frames = split_frames(
        args, tree_overrides(args, "two_task", layouts["two_task"][chosen["two_task"]], None)
    )
    ridge = {name: ridge_floor(frames[name], "sequence", column) for name, column in TARGETS.items()}
    ridge_spearman = {t: finite(ridge[t]["test_spearman"]) for t in TARGETS}
    at_least = {
        short: means[f"{short}_spearman"] >= means[f"single_task_{short}_spearman"]
        for short in SHORT.values()
    }
    above_floor = all(means[f"{SHORT[t]}_spearman"] > ridge_spearman[t] for t in TARGETS)
    return {
        # Test Spearman, means over seeds of the validation-chosen layouts.
        "bind_spearman": means["bind_spearman"],
        "expr_spearman": means["expr_spearman"],
        # A one-hot model has no weight for a residue at a site it never saw mutated: on held-out sites its
        # predictions are constant and Spearman is undefined; that floor is reported as 0.
        "ridge_bind_spearman": ridge_spearman["rbd_bind"],
        "ridge_expr_spearman": ridge_spearman["rbd_expr"],
        "single_task_bind_spearman": means["single_task_bind_spearman"],
        "single_task_expr_spearman": means["single_task_expr_spearman"],
        "ensemble_nll": means["ensemble_nll"],
        "coverage_90": means["coverage_90"],
        "bind_validation_spearman": means["bind_validation_spearman"],
        "expr_validation_spearman": means["expr_validation_spearman"],
        "single_task_bind_validation_spearman": means["single_task_bind_validation_spearman"],
        "single_task_expr_validation_spearman": means["single_task_expr_validation_spearman"],
        "two_task_at_least_single_task": at_least,
        # Two-task minus single-task test Spearman, paired by seed: mean, standard error, seeds where >= 0.
        "paired_difference": {
            short: paired(per_seed[f"{short}_spearman"], per_seed[f"single_task_{short}_spearman"])
            for short in SHORT.values()
        },
        "target_met": {
            "above_ridge_floor": above_floor,
            "two_task_at_least_single_task": all(at_least.values()),
        },
        "layout": chosen,
        "label": args.label,
        "selection": selection,
        "seeds": seeds,
        "per_seed": per_seed,
        "ensemble_size": args.ensemble_size,
        "max_epochs": args.max_epochs,
        "epochs": args.max_epochs,
        "two_task_train_minutes": means["two_task_train_minutes"],
        "minutes": (time.perf_counter() - start) / 60,
        "command": shlex.join(["python", *sys.argv]),
        "two_task_test": {str(s): two_task[s] for s in seeds},
        "single_task_test": {str(s): single[s] for s in seeds},
        "ridge": ridge,
        "hardware": hardware(args),
    }


def paired(two_task: Sequence[float], single_task: Sequence[float]) -> dict[str, float | int]:
    """Mean and standard error of the per-seed differences two_task - single_task, and how many are >= 0."""
    differences = [a - b for a, b in zip(two_task, single_task, strict=True)]
    n = len(differences)
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1) if n > 1 else float("nan")
    return {
        "mean": mean,
        "stderr": math.sqrt(variance / n),
        "seeds_at_least": sum(d >= 0 for d in differences),
    }


def with_history(
    results: dict[str, Any], previous: dict[str, Any] | None, label: str | None
) -> dict[str, Any]:
    """`results` plus the previous file's variants and, under `label`, its headline."""
    if previous is None:
        return results
    variants = dict(previous.get("variants", {}))
    name = label or previous.get("label") or "previous headline"
    variants[name] = {key: previous[key] for key in HEADLINE_KEYS if key in previous}
    return {**results, "variants": variants}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out or Path(__file__).parent / "results" / "rbd.json")
    results = benchmark(args)
    previous = json.loads(out.read_text()) if out.exists() else None
    results = _json_safe(with_history(results, previous, args.previous_label))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        json.dumps({key: results[key] for key in results if key not in ("variants", "selection")}, indent=2)
    )
    return results


def _json_safe(value):
    # Strict JSON has no NaN: undefined metrics become null.
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


if __name__ == "__main__":
    main()
