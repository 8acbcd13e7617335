"""Fault injection and the reliability figures: kill -9 training and design runs at random points, resume them,
and check that the result equals an uninterrupted run and that no checkpoint is half-written; then run the
reliability test suite (fuzz cases counted) and write bench/results/reliability.json.

    .venv/bin/python bench/reliability_faults.py [--train-trials 4] [--design-trials 4] [--seed 0]

predict_peak_mb is read from bench/results/reliability_predict.json (bench/reliability_predict.py) when present.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
WORKER = str(ROOT / "bench" / "reliability_worker.py")
RESULTS = ROOT / "bench" / "results"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def launch(args: list[str], kill_after_s: float | None = None) -> tuple[int, bool]:
    """Runs the worker; with kill_after_s, SIGKILLs it then (if still running). Returns (rc, was_killed)."""
    process = subprocess.Popen(
        [PYTHON, WORKER, *args], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        process.wait(timeout=kill_after_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return process.returncode, True
    if process.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(
            f"worker {args} failed ({process.returncode}): {process.stderr.read().decode()[-2000:]}"
        )
    return process.returncode, process.returncode == -signal.SIGKILL


def checkpoints_intact(directory: Path) -> list[str]:
    """Names of .ckpt files in `directory` that do not load (half-written); stray temp files are also listed."""
    bad = []
    for path in sorted(directory.glob("*")) if directory.is_dir() else []:
        if path.suffix != ".ckpt":
            bad.append(f"{path.name} (stray file)")
            continue
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            assert "state_dict" in checkpoint and "loops" in checkpoint
        except Exception as error:
            bad.append(f"{path.name}: {type(error).__name__}")
    return bad


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_trials(work: Path, trials: int, rng: random.Random, report: dict) -> None:
    reference_dir = work / "train-reference"
    start = time.perf_counter()
    launch(["train", str(reference_dir)])
    duration = time.perf_counter() - start
    reference = load_file(reference_dir / "final.safetensors")
    for trial in range(trials):
        run_dir = work / f"train-{trial}"
        kills = []
        if trial % 2 == 0:  # kill from outside at a random moment (import, a step, validation or a write)
            delay = rng.uniform(0.3, 1.0) * duration
            _, killed = launch(["train", str(run_dir)], kill_after_s=delay)
            kills.append(f"external at {delay:.1f}s" if killed else "finished before the kill")
        else:  # kill inside Lightning's checkpoint write, halfway through the file
            number = rng.randint(1, 5)
            _, killed = launch(["train", str(run_dir), "--kill-in-checkpoint", str(number)])
            kills.append(f"inside checkpoint write {number}" if killed else "finished before the kill")
        report["faults_injected"] += sum(1 for k in kills if not k.startswith("finished"))
        broken = checkpoints_intact(run_dir / "checkpoints")
        launch(["train", str(run_dir)])  # resume from last.ckpt (or from scratch when none was written)
        result = load_file(run_dir / "final.safetensors")
        ok = same_tensors(result, reference) and not broken
        report["resumes_verified"] += int(ok)
        report["failures"] += int(not ok)
        report["trials"].append({"kind": "train", "fault": kills[0], "half_written": broken, "equal": ok})


def design_trials(work: Path, trials: int, rng: random.Random, report: dict, num_steps: int = 6) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "design"))
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "design_conftest", ROOT / "tests" / "design" / "conftest.py"
    )
    design_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(design_conftest)
    import pandas as pd

    torch.set_num_threads(1)
    model_dir = work / "design-model"
    design_conftest.train_tiny_model().save_pretrained(model_dir)
    sequences, _ = design_conftest.rbd_windows()
    pd.DataFrame({"sequence": sequences[:4]}).to_csv(model_dir / "seeds.csv", index=False)
    reference_dir = work / "design-reference"
    start = time.perf_counter()
    launch(["design", str(reference_dir), str(model_dir), str(num_steps)])
    duration = time.perf_counter() - start
    from cortex.design.state import DesignState

    reference = DesignState.load(reference_dir / "final")
    for trial in range(trials):
        run_dir = work / f"design-{trial}"
        faults = 0
        for _ in range(2):  # two kills per trial: between/during rounds, at random moments
            _, killed = launch(
                ["design", str(run_dir), str(model_dir), str(num_steps)],
                kill_after_s=rng.uniform(0.4, 1.0) * duration,
            )
            faults += int(killed)
        report["faults_injected"] += faults
        state_dir = run_dir / "state"
        stray = [p.name for p in state_dir.glob("*")] if state_dir.is_dir() else []
        stray = [name for name in stray if name not in ("state.safetensors", "state.json")]
        if (state_dir / "state.safetensors").is_file():
            DesignState.load(state_dir)  # raises if half-written or damaged
        launch(["design", str(run_dir), str(model_dir), str(num_steps)])
        result = DesignState.load(run_dir / "final")
        ok = (
            torch.equal(result.input_ids, reference.input_ids)
            and torch.equal(result.objective, reference.objective)
            and result.history == reference.history
        )
        report["resumes_verified"] += int(ok)
        report["failures"] += int(not ok)
        report["trials"].append({"kind": "design", "kills": faults, "stray_files": stray, "equal": ok})


def fuzz_cases(work: Path) -> tuple[int, int]:
    """Runs tests/reliability (CI part and slow part); returns (fuzz cases tried, pytest exit code)."""
    counts = work / "counts.json"
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "pytest",
            "tests/reliability",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "slow or not slow",
        ],
        cwd=ROOT,
        env={**ENV, "CORTEX_RELIABILITY_COUNTS": str(counts)},
        capture_output=True,
        text=True,
    )
    total = json.loads(counts.read_text())["total"] if counts.is_file() else 0
    return total, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-trials", type=int, default=4)
    parser.add_argument("--design-trials", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--suite-only",
        action="store_true",
        help="rerun only the test suite; keep the fault trials of the existing reliability.json",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    report = {"faults_injected": 0, "resumes_verified": 0, "failures": 0, "trials": []}
    if args.suite_only:
        previous = json.loads((RESULTS / "reliability.json").read_text())
        report.update({k: previous[k] for k in ("faults_injected", "resumes_verified", "trials")})
        report["failures"] = sum(not trial["equal"] for trial in report["trials"])
    with tempfile.TemporaryDirectory(prefix="cortex-faults-") as tmp:
        work = Path(tmp)
        if not args.suite_only:
            train_trials(work, args.train_trials, rng, report)
            design_trials(work, args.design_trials, rng, report)
        cases, exit_code = fuzz_cases(work)
    report["failures"] += int(exit_code != 0)
    predict = RESULTS / "reliability_predict.json"
    peak = json.loads(predict.read_text())["predict_peak_mb"] if predict.is_file() else None
    results = {
        "fuzz_cases": cases,
        "faults_injected": report["faults_injected"],
        "resumes_verified": report["resumes_verified"],
        "failures": report["failures"],
        "predict_peak_mb": peak,
        "reliability_suite_exit_code": exit_code,
        "trials": report["trials"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reliability.json").write_text(json.dumps(results, indent=1) + "\n")
    json.dump(results, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
