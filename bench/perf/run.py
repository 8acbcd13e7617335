"""Side-by-side performance of the original cortex (pytorch-cortex 0.0.4) and this project (GitHub issue 8).

Each side runs in its own process with its own Python: the original through `v1_driver.py` (its public API,
its own environment, this project's src/ never on its path), this project through `ours_driver.py`. Same data
(real GFP rows), same tree shape, same batch, same device, in the same job. Prints one table and writes
bench/results/perf.json.

    python bench/perf/run.py --original-python /tmp/cortex-v1/bin/python --device cuda
    python bench/perf/run.py --original-python /tmp/cortex-v1/bin/python --device cpu --tiny
    python bench/perf/run.py --skip-original --device cpu --tiny     # this project's side only

Workloads: (a) tutorial-3/4 tree (conv1d root; transformer-root variant), regression + MLM leaves, width 128 and
512, batch 128; (b) transformer root 12 blocks x 768, length 256 (this project only: pytorch-cortex 0.0.4 ships
no transformer root); (c) one LaMBO-2 step (the original's on CPU: 16 designs of length 237, kl_weight 0.25;
this project's on CPU at the same size and, on CUDA, at population 128).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_ORIGINAL = "/tmp/cortex-v1/bin/python"
# Environment variables that would let one side see the other's packages.
LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")


def find_original_python(explicit: str | None) -> str | None:
    """--original-python, else $CORTEX_V1_PYTHON, else /tmp/cortex-v1/bin/python when it exists."""
    for candidate in (explicit, os.environ.get("CORTEX_V1_PYTHON"), DEFAULT_ORIGINAL):
        if candidate:
            if explicit and candidate == explicit and not Path(candidate).exists():
                raise ValueError(
                    f"--original-python {candidate!r} does not exist; expected a Python executable"
                )
            if Path(candidate).exists():
                return candidate
    return None


def side_env(pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    if pythonpath:
        # Drivers run with cwd=bench/perf: resolve relative entries against the caller's directory.
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in pythonpath.split(os.pathsep))
    return env


def run_driver(python: str, driver: str, args: list[str], pythonpath: str | None, timeout: float) -> dict:
    """Runs `driver` (a file in bench/perf/) with `python -s` in a clean environment; returns its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [python, "-s", str(HERE / driver), *args, "--out", out]
        done = subprocess.run(
            command, cwd=HERE, env=side_env(pythonpath), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(
                f"{driver} failed (exit {done.returncode}): {' '.join(command)}\n--- stderr tail ---\n"
                f"{done.stderr[-4000:]}"
            )
        with open(out) as handle:
            result = json.load(handle)
    result["command"] = " ".join(command[1:-2])
    return result


def sizes(tiny: bool, device: str) -> dict[str, Any]:
    if tiny:
        return {
            "widths": [16], "batch_size": 8, "rows": 160, "train_steps": ["--warmup-steps", "1", "--measure-steps",
            "2", "--profile-steps", "0"], "num_workers": 1, "b": None,
            "design_cpu": ["--population", "2", "--length", "24", "--guidance-updates", "1", "--steps", "1",
                           "--width", "16"],
            "design_device": None, "compile": False,
        }  # fmt: skip
    cuda = device.startswith("cuda")
    return {
        "widths": [128, 512], "batch_size": 128, "rows": 32768 if cuda else 1024,
        # 26,214 train rows = 204 steps of 128 an epoch: warm-up, measurement and profile stay inside epoch 1
        # (an epoch boundary drains and refills the workers' prefetch queue)
        "train_steps": ["--warmup-steps", "15" if cuda else "2", "--measure-steps", "100" if cuda else "4",
                        "--profile-steps", "20" if cuda else "0"],
        "num_workers": 6 if cuda else 2, "b": (768, 12) if cuda else None,
        "design_cpu": ["--population", "16", "--length", "237", "--width", "32", "--kl-weight", "0.25",
                       "--steps", "2"],
        "design_device": ["--population", "128", "--length", "237", "--width", "32", "--kl-weight", "0.25",
                          "--steps", "3"] if cuda else None,
        "compile": cuda,
    }  # fmt: skip


def geometric_mean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def ratio(ours: dict | None, theirs: dict | None, key: str) -> float | None:
    if not ours or not theirs or ours.get(key) is None or theirs.get(key) is None:
        return None
    return ours[key] / theirs[key]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--original-python", default=None, help="the original's interpreter (or $CORTEX_V1_PYTHON)"
    )
    parser.add_argument(
        "--original-pythonpath",
        default=None,
        help="PYTHONPATH of the original's process (wheels unpacked by scripts/v1-wheels.sh)",
    )
    parser.add_argument("--skip-original", action="store_true", help="run this project's side only")
    parser.add_argument("--ours-python", default=sys.executable)
    parser.add_argument(
        "--ours-pythonpath",
        default=None,
        help="PYTHONPATH of this project's process when it is not installed there (e.g. src:/tmp/site on a GPU box)",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke size (the test suite)")
    parser.add_argument("--workloads", default="a,b,c")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "perf.json"))
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per driver process")
    parser.add_argument("--widths", default=None, help="override workload a's widths, e.g. 32,128")
    parser.add_argument("--batch-size", type=int, default=None, help="override workload a's batch size")
    parser.add_argument("--rows", type=int, default=None, help="override the number of GFP rows loaded")
    parser.add_argument("--roots", default="conv1d,transformer", help="workload a's roots, e.g. conv1d")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled runs (cuda)")
    parser.add_argument(
        "--compile-modes",
        default="default",
        help="comma list of torch.compile modes, each a compiled run of every config (e.g. default,reduce-overhead)",
    )
    parser.add_argument(
        "--step-graph-modes",
        default="",
        help="cuda: comma list of runs with each training step captured as a CUDA graph (step_graph), by compile "
        "mode: 'eager' (no torch.compile) or a torch.compile mode without CUDA graphs (e.g. eager,default)",
    )
    parser.add_argument("--no-ddp", action="store_true", help="skip the 2-GPU DDP runs (cuda)")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        help="no runs: merge the rows of these perf JSONs (e.g. one job per width) into --out and print the table",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.merge:
        rows = []
        for path in args.merge:
            with open(path) as handle:
                rows.extend(json.load(handle)["details"])
        summary = summarize(rows, args)
        summary["merged_from"] = [os.path.basename(path) for path in args.merge]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(summary, handle, indent=1)
        sys.stdout.write(table(rows) + "\n")
        return summary
    workloads = set(args.workloads.split(","))
    if not workloads <= {"a", "b", "c"}:
        raise ValueError(f"--workloads {args.workloads!r}; expected a comma list of a, b, c")
    original = None if args.skip_original else find_original_python(args.original_python)
    if original is None and not args.skip_original:
        raise ValueError(
            f"no original Python: --original-python not given, $CORTEX_V1_PYTHON unset and {DEFAULT_ORIGINAL} "
            "absent; install it (bench/perf/README.md) or pass --skip-original"
        )
    size = sizes(args.tiny, args.device)
    if args.widths:
        size["widths"] = [int(w) for w in args.widths.split(",")]
    for key in ("batch_size", "rows"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    if args.no_compile:
        size["compile"] = False
    cuda = args.device == "cuda"
    compile_modes = [mode for mode in args.compile_modes.split(",") if mode]
    graph_modes = [mode for mode in args.step_graph_modes.split(",") if mode] if cuda else []
    rows: list[dict[str, Any]] = []

    def record(row: dict[str, Any]) -> None:
        """Appends a finished row and rewrites --out at once, so a run cut short keeps what it measured."""
        rows.append(row)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(summarize(rows, args), handle, indent=1)

    def ours(*extra: str) -> dict:
        return run_driver(args.ours_python, "ours_driver.py", list(extra), args.ours_pythonpath, args.timeout)

    def theirs(*extra: str) -> dict:
        result = run_driver(original, "v1_driver.py", list(extra), args.original_pythonpath, args.timeout)
        if Path(result["cortex_file"]).resolve().is_relative_to(REPO / "src"):
            raise RuntimeError(
                f"the original's process imported this project's cortex ({result['cortex_file']})"
            )
        return result

    train_common = ["train", "--device", args.device, "--batch-size", str(size["batch_size"]),
                    "--rows", str(size["rows"]), *size["train_steps"]]  # fmt: skip
    if "a" in workloads:
        for root in args.roots.split(","):
            for width in size["widths"]:
                config = f"a {root} w{width} b{size['batch_size']}"
                mine = ours(*train_common, "--root", root, "--width", str(width),
                            "--num-workers", str(size["num_workers"]))  # fmt: skip
                row = {"workload": "a", "config": config, "ours": mine, "original": None}
                if root == "conv1d" and original:
                    row["original"] = theirs(*train_common, "--width", str(width))
                elif root == "transformer":
                    row["note"] = "pytorch-cortex 0.0.4 ships no TransformerRoot: ours only"
                if size["compile"]:
                    row["ours_compiled"] = {}
                    for mode in compile_modes:
                        row["ours_compiled"][mode] = ours(*train_common, "--root", root, "--width", str(width),
                                                          "--num-workers", str(size["num_workers"]), "--compile",
                                                          "--compile-mode", mode)  # fmt: skip
                if graph_modes:
                    row["ours_step_graph"] = {}
                    for mode in graph_modes:
                        compiled = [] if mode == "eager" else ["--compile", "--compile-mode", mode]
                        row["ours_step_graph"][mode] = ours(*train_common, "--root", root, "--width", str(width),
                                                            "--num-workers", str(size["num_workers"]),
                                                            "--step-graph", *compiled)  # fmt: skip
                if cuda and not args.no_ddp and root == "conv1d" and _device_count(args.ours_python) >= 2:
                    row["ours_ddp2"] = ours(*train_common, "--root", root, "--width", str(width),
                                            "--num-workers", str(size["num_workers"]), "--devices", "2")  # fmt: skip
                record(row)
    if "b" in workloads and size["b"] is not None:
        width, blocks = size["b"]
        b_args = [*train_common, "--root", "transformer", "--width", str(width), "--num-blocks", str(blocks),
                  "--num-workers", str(size["num_workers"])]  # fmt: skip
        row = {"workload": "b", "config": f"b transformer {blocks}x{width} L256", "ours": ours(*b_args),
               "original": None, "note": "pytorch-cortex 0.0.4 ships no TransformerRoot: ours only"}  # fmt: skip
        if size["compile"]:
            row["ours_compiled"] = {
                mode: ours(*b_args, "--compile", "--compile-mode", mode) for mode in compile_modes
            }
        record(row)
    if "c" in workloads:
        design = ["design", *size["design_cpu"]]
        row = {"workload": "c", "config": "c LaMBO-2 step, CPU", "ours": ours(*design, "--device", "cpu"),
               "original": theirs(*design) if original else None}  # fmt: skip
        record(row)
        if size["design_device"] is not None:
            record(
                {
                    "workload": "c",
                    "config": "c LaMBO-2 step, ours on CUDA (original: CPU only)",
                    "ours": ours("design", *size["design_device"], "--device", "cuda"),
                    "original": None,
                }
            )

    summary = summarize(rows, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(summary, handle, indent=1)
    sys.stdout.write(table(rows) + "\n")
    sys.stdout.write(json.dumps({k: v for k, v in summary.items() if k != "details"}) + "\n")
    return summary


def _device_count(python: str) -> int:
    done = subprocess.run([python, "-c", "import torch; print(torch.cuda.device_count())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout.strip())


def settings(row: dict) -> dict[str, dict]:
    """This project's runs of one row by setting: "eager", "compiled:<mode>" for each compile mode and
    "step_graph:<mode>" for each step-graph run ("eager" or the compile mode inside the graph)."""
    found = {"eager": row["ours"]}
    found.update({f"compiled:{mode}": result for mode, result in (row.get("ours_compiled") or {}).items()})
    found.update(
        {f"step_graph:{mode}": result for mode, result in (row.get("ours_step_graph") or {}).items()}
    )
    return found


def is_compiled(setting: str) -> bool:
    """Whether a setting runs torch.compile (the compile speed-up compares these with eager)."""
    return setting.startswith("compiled:") or (
        setting.startswith("step_graph:") and setting != "step_graph:eager"
    )


def setting_figures(rows: list[dict], setting: str) -> dict[str, Any]:
    """Workload (a) figures of one setting of this project against the original (None where not measured)."""
    a_rows = [r for r in rows if r["workload"] == "a" and setting in settings(r)]
    pairs = [r for r in a_rows if r["original"]]
    busy = [settings(r)[setting].get("gpu_busy") for r in a_rows]
    busy = [b for b in busy if b is not None]
    syncs = [settings(r)[setting].get("syncs_per_step") for r in a_rows]
    syncs = [x for x in syncs if x is not None]
    speedups = [ratio(settings(r)[setting], r["ours"], "samples_per_s") for r in a_rows]
    return {
        "train_ratio_a": geometric_mean(
            [x for x in (ratio(settings(r)[setting], r["original"], "samples_per_s") for r in pairs) if x]
        ),
        "gpu_busy_a": (sum(busy) / len(busy)) if busy else None,
        "memory_ratio_a": max(
            [
                x
                for x in (ratio(settings(r)[setting], r["original"], "peak_memory_bytes") for r in pairs)
                if x
            ],
            default=None,
        ),
        "speedup_over_eager": geometric_mean([x for x in speedups if x]),
        "syncs_per_step": max(syncs, default=None),
        "configs": [r["config"] for r in a_rows],
    }


# Issue 8's targets at workload (a) besides throughput: GPU busy (mean over configs) and peak memory over the original's.
BUSY_TARGET, MEMORY_TARGET = 0.9, 1.0


def meets_busy_and_memory(figures: dict[str, Any]) -> bool:
    busy, memory = figures.get("gpu_busy_a"), figures.get("memory_ratio_a")
    return busy is not None and memory is not None and busy >= BUSY_TARGET and memory <= MEMORY_TARGET


def summarize(rows: list[dict], args: argparse.Namespace) -> dict:
    names = sorted({name for r in rows if r["workload"] == "a" for name in settings(r)})
    by_setting = {name: setting_figures(rows, name) for name in names}
    # The headline is this project's fastest setting against the original among those that also meet issue 8's
    # GPU-busy and memory targets (all of its figures from that one setting), else the fastest; the fastest is
    # named beside it and every setting's figures are kept.
    measured = [name for name in names if by_setting[name]["train_ratio_a"] is not None]
    fastest = max(measured, key=lambda name: by_setting[name]["train_ratio_a"]) if measured else "eager"
    on_target = [name for name in measured if meets_busy_and_memory(by_setting[name])]
    headline = max(on_target, key=lambda name: by_setting[name]["train_ratio_a"]) if on_target else fastest
    head = by_setting.get(headline, {})
    compiled = [name for name in names if is_compiled(name) and by_setting[name]["speedup_over_eager"]]
    best_compiled = max(compiled, key=lambda name: by_setting[name]["speedup_over_eager"], default=None)
    ddp = [ratio(r["ours_ddp2"], r["ours"], "samples_per_s") for r in rows if "ours_ddp2" in r]
    design = [
        ratio(r["ours"], r["original"], "steps_per_s") for r in rows if r["workload"] == "c" and r["original"]
    ]
    gpu = next((r["ours"].get("gpu") for r in rows if r["ours"].get("gpu")), None)
    return {
        "train_ratio_a": head.get("train_ratio_a"),
        "gpu_busy_a": head.get("gpu_busy_a"),
        "memory_ratio_a": head.get("memory_ratio_a"),
        "compile_speedup": by_setting[best_compiled]["speedup_over_eager"] if best_compiled else None,
        "ddp2_scaling": geometric_mean([x for x in ddp if x]),
        "design_ratio_c": geometric_mean([x for x in design if x]),
        "gpu": gpu or "none (cpu run)",
        "headline_setting": headline,
        "fastest_setting": fastest,
        "compile_setting": best_compiled,
        "settings": by_setting,
        "device": args.device,
        "tiny": args.tiny,
        "date": datetime.date.today().isoformat(),
        "definitions": {
            "train_ratio_a": "ours / original training samples/s (rows of all tasks per second, steady state), "
            "geometric mean over the conv1d configs, for the headline setting (this project's fastest setting "
            f"with GPU busy >= {BUSY_TARGET} and memory ratio <= {MEMORY_TARGET}, else its fastest; "
            "'fastest_setting' names the fastest; every setting's figures are under 'settings')",
            "gpu_busy_a": "ours (headline setting), mean over workload-a configs: torch.profiler kernel-interval "
            "union / wall time",
            "memory_ratio_a": "ours (headline setting) / original torch.cuda.max_memory_allocated, worst config",
            "compile_speedup": "ours compiled / ours eager samples/s, geometric mean, best setting with torch.compile "
            "(a compile mode, or a step graph of compiled code)",
            "ddp2_scaling": "ours 2-GPU DDP / 1-GPU samples/s (ideal 2.0), eager",
            "design_ratio_c": "ours / original LaMBO-2 steps/s on CPU at the same population and length",
            "syncs_per_step": "host-device synchronisations a step (torch.cuda sync debug warnings, 5 steps)",
        },
        "details": rows,
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    lines = [
        f"{'config':<44} {'original':>10} {'ours':>10} {'ratio':>7} {'busy':>6} {'mem':>6} {'compiled':>9} {'ddp2':>6}"
    ]
    for r in rows:
        key = "steps_per_s" if r["workload"] == "c" else "samples_per_s"
        theirs = (r["original"] or {}).get(key)
        for name, result in settings(r).items():
            compiled = ratio(result, r["ours"], key) if name != "eager" else None
            ddp = ratio(r.get("ours_ddp2"), r["ours"], key) if name == "eager" else None
            lines.append(
                f"{r['config'] + ' ' + name:<44} {_fmt(theirs, '.3g'):>10} {_fmt(result.get(key), '.3g'):>10} "
                f"{_fmt(ratio(result, r['original'], key), '.2f'):>7} {_fmt(result.get('gpu_busy'), '.0%'):>6} "
                f"{_fmt(ratio(result, r['original'], 'peak_memory_bytes'), '.2f'):>6} {_fmt(compiled, '.2f'):>9} "
                f"{_fmt(ddp, '.2f'):>6}"
            )
    lines.append(
        "units: samples/s for a and b (all tasks' rows), design steps/s for c; ratio = ours / original"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
