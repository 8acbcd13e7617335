"""RBD binding + expression quality benchmark (issue 4) on the position-held-out split of configs/data/rbd.yaml.

Runs, on the same split: a two-task tree (rbd_bind + rbd_expr leaves on one branch, ensemble of
`--ensemble-size` members), two single-task trees of the same architecture, and a one-hot ridge floor. Reports
test Spearman per target, and the two-task ensemble's Gaussian NLL and 90% interval coverage (means over both
targets, in original units). Writes bench/results/rbd.json.

    .venv/bin/python bench/train_rbd.py --max-epochs 8 --num-threads 1                     # CPU
    python bench/train_rbd.py --accelerator gpu --precision bf16-mixed --max-epochs 30       # GPU
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
    parser.add_argument("--parallel", action="store_true", help="train the three trees in worker processes")
    parser.add_argument(
        "--workers",
        type=int,
        default=3,
        help="worker processes with --parallel (2: two-task | both single-task)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out or Path(__file__).parent / "results" / "rbd.json")
    ensemble = [f"branches.property.ensemble_size={args.ensemble_size}", "data.rbd.source=" + str(DATA)]
    runs = {"two_task": [*ensemble, "tasks=[rbd_bind,rbd_expr]"]}
    runs.update({name: [*ensemble, f"tasks=[{name}]"] for name in TARGETS})
    if args.parallel:
        if not 1 <= args.workers <= len(runs):
            raise ValueError(f"--workers={args.workers}; expected 1..{len(runs)}")
        # Submission order two_task, rbd_bind, rbd_expr: with 2 workers the single-task trees share one.
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = {
                name: pool.submit(train_and_test, name, args, overrides) for name, overrides in runs.items()
            }
            done = {name: future.result() for name, future in futures.items()}
    else:
        done = {name: train_and_test(name, args, overrides) for name, overrides in runs.items()}
    two_task, minutes, frames = done["two_task"]
    single = {name: done[name][0][name] for name in TARGETS}
    # The rows of each split exactly as the two-task run saw them (position-held-out GroupSplit).
    ridge = {name: ridge_floor(frames[name], "sequence", column) for name, column in TARGETS.items()}
    total_minutes = (time.perf_counter() - start) / 60
    results = {
        "bind_spearman": two_task["rbd_bind"]["spearman"],
        "expr_spearman": two_task["rbd_expr"]["spearman"],
        # A one-hot model has no weight for a residue at a site it never saw mutated: on held-out sites its
        # predictions are constant and Spearman is undefined; that floor is reported as 0.
        "ridge_bind_spearman": _finite(ridge["rbd_bind"]["test_spearman"]),
        "ridge_expr_spearman": _finite(ridge["rbd_expr"]["test_spearman"]),
        "single_task_bind_spearman": single["rbd_bind"]["spearman"],
        "single_task_expr_spearman": single["rbd_expr"]["spearman"],
        "ensemble_nll": (two_task["rbd_bind"]["nll"] + two_task["rbd_expr"]["nll"]) / 2,
        "coverage_90": (two_task["rbd_bind"]["coverage_90"] + two_task["rbd_expr"]["coverage_90"]) / 2,
        "ensemble_size": args.ensemble_size,
        "max_epochs": args.max_epochs,
        "epochs": args.max_epochs,
        "two_task_train_minutes": minutes,
        "minutes": total_minutes,
        "command": " ".join(["python", *sys.argv]),
        "two_task_test": two_task,
        "single_task_test": single,
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
