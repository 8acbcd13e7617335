"""bench/perf/run.py at a tiny CPU size, so the side-by-side harness cannot rot. This project's side always
runs; the original's side runs when /tmp/cortex-v1/bin/python (or $CORTEX_V1_PYTHON) exists and is skipped,
with the reason, otherwise."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from bench_scripts import load_script

REPO = Path(__file__).resolve().parents[2]
PERF = REPO / "bench" / "perf"


def _load(name: str):
    return load_script(PERF, name)


run = _load("run")
common = _load("common")


def _original_python() -> str | None:
    candidate = os.environ.get("CORTEX_V1_PYTHON") or run.DEFAULT_ORIGINAL
    return candidate if Path(candidate).exists() else None


def _check_side(result: dict, side: str, key: str) -> None:
    assert result["side"] == side
    assert result[key] > 0 and result[key] == result[key]  # positive and not NaN
    inside_repo = Path(result["cortex_file"]).resolve().is_relative_to(REPO / "src")
    assert inside_repo == (side == "ours"), result["cortex_file"]


def test_ours_tiny_cpu_run_writes_every_figure(tmp_path):
    out = tmp_path / "perf.json"
    summary = run.main(
        ["--skip-original", "--tiny", "--device", "cpu", "--workloads", "a,c", "--out", str(out)]
    )
    assert json.loads(out.read_text())["details"] == json.loads(json.dumps(summary["details"]))
    for key in ("train_ratio_a", "gpu_busy_a", "memory_ratio_a", "compile_speedup", "ddp2_scaling",
                "design_ratio_c", "gpu"):  # fmt: skip
        assert key in summary
    configs = [row["config"] for row in summary["details"]]
    assert configs == ["a conv1d w16 b8", "a transformer w16 b8", "c LaMBO-2 step, CPU"]
    for row in summary["details"]:
        _check_side(row["ours"], "ours", "steps_per_s" if row["workload"] == "c" else "samples_per_s")
        assert row["original"] is None
    assert summary["gpu"] == "none (cpu run)"


def test_original_and_ours_side_by_side_tiny_cpu(tmp_path):
    original = _original_python()
    if original is None:
        reason = (
            f"the original cortex is not installed: {run.DEFAULT_ORIGINAL} is absent and $CORTEX_V1_PYTHON is "
            "unset (see bench/perf/README.md); the original's side of the harness was NOT run"
        )
        print(reason)
        pytest.skip(reason)
    summary = run.main(
        ["--original-python", original, "--tiny", "--device", "cpu", "--workloads", "a,c",
         "--out", str(tmp_path / "perf.json")]
    )  # fmt: skip
    conv, transformer, design = summary["details"]
    _check_side(conv["original"], "original", "samples_per_s")
    _check_side(conv["ours"], "ours", "samples_per_s")
    assert transformer["original"] is None and "no TransformerRoot" in transformer["note"]
    _check_side(design["original"], "original", "steps_per_s")
    assert summary["train_ratio_a"] == pytest.approx(
        conv["ours"]["samples_per_s"] / conv["original"]["samples_per_s"]
    )
    assert summary["design_ratio_c"] == pytest.approx(
        design["ours"]["steps_per_s"] / design["original"]["steps_per_s"]
    )


def test_a_missing_original_python_is_named(tmp_path):
    missing = str(tmp_path / "no-such-python")
    with pytest.raises(ValueError, match="no-such-python"):
        run.main(["--original-python", missing, "--tiny", "--out", str(tmp_path / "perf.json")])


def test_unknown_workload_is_named(tmp_path):
    with pytest.raises(ValueError, match="'a,z'"):
        run.main(["--skip-original", "--workloads", "a,z", "--out", str(tmp_path / "perf.json")])


def test_kernel_busy_fraction_is_the_union_of_kernel_intervals(tmp_path):
    # kernels [0, 10] and [5, 20] overlap (union 20 us), [30, 35] is apart (5 us); the cpu op is not a kernel
    events = [
        {"cat": "kernel", "ts": 0, "dur": 10},
        {"cat": "kernel", "ts": 5, "dur": 15},
        {"cat": "kernel", "ts": 30, "dur": 5},
        {"cat": "kernel", "ts": 31, "dur": 1},
        {"cat": "cpu_op", "ts": 0, "dur": 100},
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    assert common.kernel_busy_fraction(trace, wall_s=100e-6) == pytest.approx(0.25)


def test_load_gfp_is_seeded_and_rejects_too_many_rows():
    first, second = common.load_gfp(32, seed=1), common.load_gfp(32, seed=1)
    assert first.equals(second) and not first.equals(common.load_gfp(32, seed=2))
    assert not first["sequence"].str.contains(r"\*").any()
    with pytest.raises(ValueError, match="num_rows=10000000"):
        common.load_gfp(10_000_000)


def test_step_graph_settings_are_summarized_and_only_compiled_ones_count_as_compiled():
    """Rows as bench/perf/run.py records them (figures made up; summarize is arithmetic): the headline is the fastest
    setting against the original that meets the GPU-busy and memory targets (else the fastest), the compile speed-up
    the best setting that runs torch.compile."""

    def result(samples, busy, memory):
        return {"samples_per_s": samples, "gpu_busy": busy, "peak_memory_bytes": memory, "gpu": "test"}

    row = {
        "workload": "a",
        "config": "a conv1d w128 b128",
        "original": result(1000.0, 0.04, 100),
        "ours": result(10000.0, 0.2, 80),
        "ours_compiled": {"reduce-overhead": result(20000.0, 0.2, 85)},
        "ours_step_graph": {"eager": result(40000.0, 0.9, 90), "default": result(30000.0, 0.7, 70)},
    }
    args = run.argparse.Namespace(device="cuda", tiny=False)
    summary = run.summarize([row], args)
    assert set(summary["settings"]) == {
        "eager",
        "compiled:reduce-overhead",
        "step_graph:eager",
        "step_graph:default",
    }
    assert summary["headline_setting"] == "step_graph:eager"
    assert summary["train_ratio_a"] == pytest.approx(40.0) and summary["gpu_busy_a"] == pytest.approx(0.9)
    assert summary["memory_ratio_a"] == pytest.approx(0.9)
    # step_graph:eager is 4x eager but runs no torch.compile: the compile figure is step_graph:default's 3x
    assert summary["compile_setting"] == "step_graph:default" and summary["compile_speedup"] == pytest.approx(
        3.0
    )
    assert summary["fastest_setting"] == "step_graph:eager"
    # a faster setting that leaves the GPU idle is named fastest, not the headline; its figures stay under settings
    row["ours_step_graph"]["default"] = result(60000.0, 0.7, 70)
    summary = run.summarize([row], args)
    assert (
        summary["fastest_setting"] == "step_graph:default"
        and summary["headline_setting"] == "step_graph:eager"
    )
    assert summary["train_ratio_a"] == pytest.approx(40.0)
    assert summary["settings"]["step_graph:default"]["train_ratio_a"] == pytest.approx(60.0)
    # with no setting on target, the headline falls back to the fastest
    row["ours_step_graph"]["eager"] = result(40000.0, 0.9, 120)
    summary = run.summarize([row], args)
    assert summary["headline_setting"] == summary["fastest_setting"] == "step_graph:default"
