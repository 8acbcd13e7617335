"""RBD binding + expression quality benchmark (issue 4) on the position-held-out split of configs/data/rbd.yaml.

Runs, on the same split: a two-task tree (rbd_bind + rbd_expr leaves on one branch, ensemble of
`--ensemble-size` members), two single-task trees of the same architecture, and a one-hot ridge floor. Reports
test Spearman per target, and the two-task ensemble's Gaussian NLL and 90% interval coverage (means over both
targets, in original units). Writes bench/results/rbd.json.

    .venv/bin/python bench/train_rbd.py --max-epochs 8 --num-threads 1                     # CPU
    python bench/train_rbd.py --accelerator gpu --precision bf16-mixed --max-epochs 30 --seeds 5 \
        --num-threads 2 --parallel --workers 6                                             # GPU, 5 seeds

With `--seeds N` every variant is trained with seeds 0..N-1; the headline keys are means over seeds (the
two-task vs single-task comparison is on the means) and `per_seed` holds each seed's values.
"""

from __future__ import annotations

import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from ridge_onehot import ridge_floor
from train_common import arguments, hardware, train_and_test

DATA = Path(__file__).resolve().parents[1] / "data" / "rbd_starr2020_bind_expr.csv.gz"
TARGETS = {"rbd_bind": "bind_delta_log10Ka", "rbd_expr": "expr_delta_meanF"}


def main() -> None:
    parser = arguments(__doc__, default_epochs=8)
    parser.add_argument("--ensemble-size", type=int, default=4)
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="train every variant with seeds 0..N-1 (config `seed`: init, batch order, corruption; the split "
        "stays fixed); results report per-seed values and compare the means",
    )
    parser.add_argument("--parallel", action="store_true", help="train the trees in worker processes")
    parser.add_argument(
        "--workers",
        type=int,
        default=3,
        help="worker processes with --parallel (jobs are submitted seed by seed: two-task, bind, expr)",
    )
    parser.add_argument(
        "--two-task-overrides",
        nargs="*",
        default=[],
        help="Hydra overrides for the two-task run only, e.g. a branch per task: "
        "'+branches.expr={type: conv1d, ...}' tasks.rbd_expr.leaf.branch=expr",
    )
    args = parser.parse_args()
    if args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds}; expected at least 1")
    start = time.perf_counter()
    out = Path(args.out or Path(__file__).parent / "results" / "rbd.json")
    ensemble = [f"branches.property.ensemble_size={args.ensemble_size}", "data.rbd.source=" + str(DATA)]
    runs = {"two_task": [*ensemble, "tasks=[rbd_bind,rbd_expr]", *args.two_task_overrides]}
    runs.update({name: [*ensemble, f"tasks=[{name}]"] for name in TARGETS})
    seeds = list(range(args.seeds))
    jobs = {
        (name, seed): (f"{name}/seed{seed}", [*overrides, f"seed={seed}"])
        for seed in seeds
        for name, overrides in runs.items()
    }
    if args.parallel:
        if not 1 <= args.workers <= len(jobs):
            raise ValueError(f"--workers={args.workers}; expected 1..{len(jobs)} (variants x seeds)")
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = {
                key: pool.submit(train_and_test, run_name, args, overrides)
                for key, (run_name, overrides) in jobs.items()
            }
            done = {key: future.result() for key, future in futures.items()}
    else:
        done = {key: train_and_test(run_name, args, overrides) for key, (run_name, overrides) in jobs.items()}
    two_task = {seed: done["two_task", seed][0] for seed in seeds}
    single = {seed: {name: done[name, seed][0][name] for name in TARGETS} for seed in seeds}
    # The rows of each split exactly as the two-task run saw them (position-held-out GroupSplit, seed-independent).
    frames = done["two_task", seeds[0]][2]
    ridge = {name: ridge_floor(frames[name], "sequence", column) for name, column in TARGETS.items()}
    per_seed = {
        "bind_spearman": [two_task[s]["rbd_bind"]["spearman"] for s in seeds],
        "expr_spearman": [two_task[s]["rbd_expr"]["spearman"] for s in seeds],
        "single_task_bind_spearman": [single[s]["rbd_bind"]["spearman"] for s in seeds],
        "single_task_expr_spearman": [single[s]["rbd_expr"]["spearman"] for s in seeds],
        "ensemble_nll": [
            (two_task[s]["rbd_bind"]["nll"] + two_task[s]["rbd_expr"]["nll"]) / 2 for s in seeds
        ],
        "coverage_90": [
            (two_task[s]["rbd_bind"]["coverage_90"] + two_task[s]["rbd_expr"]["coverage_90"]) / 2
            for s in seeds
        ],
        "two_task_train_minutes": [done["two_task", s][1] for s in seeds],
    }
    means = {key: sum(values) / len(values) for key, values in per_seed.items()}
    total_minutes = (time.perf_counter() - start) / 60
    results = {
        # Means over seeds; the two-task vs single-task comparison is on these means.
        "bind_spearman": means["bind_spearman"],
        "expr_spearman": means["expr_spearman"],
        # A one-hot model has no weight for a residue at a site it never saw mutated: on held-out sites its
        # predictions are constant and Spearman is undefined; that floor is reported as 0.
        "ridge_bind_spearman": _finite(ridge["rbd_bind"]["test_spearman"]),
        "ridge_expr_spearman": _finite(ridge["rbd_expr"]["test_spearman"]),
        "single_task_bind_spearman": means["single_task_bind_spearman"],
        "single_task_expr_spearman": means["single_task_expr_spearman"],
        "ensemble_nll": means["ensemble_nll"],
        "coverage_90": means["coverage_90"],
        "two_task_at_least_single_task": {
            "bind": means["bind_spearman"] >= means["single_task_bind_spearman"],
            "expr": means["expr_spearman"] >= means["single_task_expr_spearman"],
        },
        "seeds": seeds,
        "per_seed": per_seed,
        "ensemble_size": args.ensemble_size,
        "max_epochs": args.max_epochs,
        "epochs": args.max_epochs,
        "two_task_train_minutes": means["two_task_train_minutes"],
        "minutes": total_minutes,
        "command": " ".join(["python", *sys.argv]),
        "two_task_test": {str(s): two_task[s] for s in seeds},
        "single_task_test": {str(s): single[s] for s in seeds},
        "ridge": ridge,
        "hardware": hardware(args),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json_safe(results), indent=2) + "\n")
    print(json.dumps(_json_safe(results), indent=2))


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _json_safe(value):
    # Strict JSON has no NaN: undefined metrics become null.
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


if __name__ == "__main__":
    main()
