"""Load: predict and embed on 100,000 sequences through cortex.inference.run_inference (streamed in chunks),
with the peak resident memory of the process; the same at 10,000 rows shows that memory does not grow with the
input. Writes bench/results/reliability_predict.json (predict_peak_mb is read by reliability_faults.py).

    .venv/bin/python bench/reliability_predict.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "rbd_starr2020_bind_expr.csv.gz"


def one_run(model_dir: str, input_path: str, output_path: str, mode: str) -> None:
    """Child process: stream `input_path` through the saved model; prints rows, seconds and peak RSS (MB)."""
    import torch

    from cortex.inference import TreeInference, run_inference
    from cortex.model import NeuralTreeModel

    torch.set_num_threads(2)
    model = NeuralTreeModel.from_pretrained(model_dir)
    inference = TreeInference(model, batch_size=256, device="cpu")
    start = time.perf_counter()
    rows = run_inference(
        inference, input_path, output_path, mode=mode, chunk_size=5_000, progress=False, keep_columns=[]
    )
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    import pandas as pd

    from cortex.model import NeuralTreeConfig, NeuralTreeModel

    sequences = pd.read_csv(DATA)["sequence"]
    sequences = sequences[~sequences.str.contains(r"\*")].reset_index(drop=True)
    config = NeuralTreeConfig(
        roots={
            "protein": {
                "type": "conv1d",
                "max_length": 256,
                "embed_dim": 32,
                "channel_dim": 32,
                "out_dim": 32,
                "num_blocks": 2,
            }
        },
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"property": {"type": "mlp", "out_dim": 32, "hidden_dim": 32, "ensemble_size": 2}},
        leaves={"bind": {"type": "regressor", "branch": "property", "out_dim": 1}},
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="cortex-load-") as tmp:
        model_dir = Path(tmp) / "model"
        NeuralTreeModel(config).save_pretrained(model_dir)
        for rows in (args.rows // 10, args.rows):
            frame = pd.DataFrame(
                {"sequence": sequences.sample(rows, replace=True, random_state=0).to_numpy()}
            )
            input_path = Path(tmp) / f"input-{rows}.csv"
            frame.to_csv(input_path, index=False)
            for mode in ("predict", "embed"):
                output_path = Path(tmp) / f"{mode}-{rows}.parquet"
                child = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        str(model_dir),
                        str(input_path),
                        str(output_path),
                        mode,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                measured = json.loads(child.stdout.strip().splitlines()[-1])
                written = pd.read_parquet(output_path)
                measured["rows_written"] = len(written)
                measured["finite"] = bool(pd.DataFrame(written).notna().all().all())
                results[f"{mode}_{rows}"] = measured
    summary = {
        "rows": args.rows,
        "predict_peak_mb": round(results[f"predict_{args.rows}"]["peak_mb"], 1),
        "embed_peak_mb": round(results[f"embed_{args.rows}"]["peak_mb"], 1),
        "predict_peak_mb_at_tenth": round(results[f"predict_{args.rows // 10}"]["peak_mb"], 1),
        "runs": results,
        "device": "CPU, 2 cores",
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "reliability_predict.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        one_run(*sys.argv[2:6])
    else:
        main()
