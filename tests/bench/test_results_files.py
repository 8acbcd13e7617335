"""Every benchmark result file is valid JSON and carries the keys its issue names, so scripts can check them."""

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"

REQUIRED_KEYS = {
    "dataloader.json": {"seq_per_s", "machine"},
    "gfp.json": {"test_spearman", "train_minutes", "hardware"},
    "rbd.json": {
        "bind_spearman",
        "expr_spearman",
        "ridge_bind_spearman",
        "ridge_expr_spearman",
        "single_task_bind_spearman",
        "single_task_expr_spearman",
        "ensemble_nll",
        "coverage_90",
    },
    "compile.json": {"speedup_compiled_vs_eager", "mfu_large", "graph_breaks", "gpu"},
    "lambo_rbd.json": {"gain_lambo", "gain_unguided", "gain_random", "steps", "seeds"},
    "ehrlich.json": {"easy", "medium", "hard"},
    "gb1.json": {"lambo_median_evals_to_top1pct", "ga_median_evals_to_top1pct", "seeds"},
    "perf.json": {
        "train_ratio_a",
        "gpu_busy_a",
        "memory_ratio_a",
        "compile_speedup",
        "ddp2_scaling",
        "design_ratio_c",
        "gpu",
    },
    "reliability.json": {"fuzz_cases", "faults_injected", "resumes_verified", "failures", "predict_peak_mb"},
    "peft.json": {"lora_trainable_params", "full_trainable_params", "lora_metric", "full_metric", "metric"},
}


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_result_file_is_json_with_the_issue_keys(path: Path) -> None:
    data = json.loads(path.read_text())
    missing = REQUIRED_KEYS.get(path.name, set()) - set(data)
    assert not missing, f"{path.name} lacks keys {sorted(missing)}"


def test_dataloader_result_names_every_worker_setting() -> None:
    path = RESULTS / "dataloader.json"
    if not path.exists():
        pytest.skip("bench/dataloader.py has not been run")
    seq_per_s = json.loads(path.read_text())["seq_per_s"]
    assert set(seq_per_s) >= {"in_process_tokenize", "workers_0", "workers_1", "workers_2"}
    assert all(value > 0 for value in seq_per_s.values())
