"""GFP quality benchmark (issue 4): avGFP log brightness on the TAPE-like split of configs/data/gfp.yaml (train
on genotypes with at most 3 mutations, test on 4 or more); target test Spearman >= 0.68. Writes
bench/results/gfp.json {"test_spearman", "train_minutes", "hardware", ...}.

    .venv/bin/python bench/train_gfp.py --max-epochs 2 --num-threads 2                     # CPU-sized
    python bench/train_gfp.py --accelerator gpu --precision bf16-mixed --max-epochs 20      # GPU
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_common import arguments, hardware, train_and_test

DATA = Path(__file__).resolve().parents[1] / "data" / "gfp_sarkisyan2016.csv.gz"


def main() -> None:
    args = arguments(__doc__, default_epochs=20).parse_args()
    out = Path(args.out or Path(__file__).parent / "results" / "gfp.json")
    test, minutes, _ = train_and_test(
        "gfp",
        args,
        [
            "tasks=[gfp_log_brightness]",
            "data=gfp",
            "data.gfp.source=" + str(DATA),
            "datamodule.eval_batch_size=256",
        ],
    )
    metrics = test["gfp_log_brightness"]
    results = {
        "test_spearman": metrics["spearman"],
        "train_minutes": minutes,
        "hardware": hardware(args),
        "max_epochs": args.max_epochs,
        "test": metrics,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
