"""LoRA vs full fine-tuning of a pretrained AntiBERTy root (antiberty==0.1.3) on real RBD expression data.

Task: SARS-CoV-2 RBD expression (Starr et al. 2020, data/rbd_starr2020_bind_expr.csv.gz), single mutants at RBD
sites 1..WINDOW, sequences cut to the first WINDOW residues (CPU-sized); random 60/40 train/test split.
Both runs: same tree (AntiBERTy root -> sum trunk -> MLP branch -> regressor leaf), same seed, batches and
epochs; full fine-tuning trains every weight (root lr 5e-5, heads 1e-3), LoRA (r=8 on query/value) trains
adapters and heads (lr 1e-3). Metric: Spearman of the predicted mean with the measured expression on the test rows.

    .venv/bin/python bench/peft_antiberty.py          # writes bench/results/peft.json (a few minutes, 2 CPU cores)
"""

from __future__ import annotations

import importlib.resources
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader

from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.peft import add_lora, count_parameters
from cortex.tasks import RegressionTask
from cortex.trainer import TreeTrainerCollator, fit_tasks, tree_rows

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 32
EPOCHS = 3
BATCH = 16
SEED = 0


def rbd_rows() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.read_csv(ROOT / "data" / "rbd_starr2020_bind_expr.csv.gz")
    frame = frame[~frame["sequence"].str.contains(r"\*")]
    site = frame["mutant"].str[1:-1].astype(int)
    frame = frame[(site <= WINDOW) & frame["expr_delta_meanF"].notna()].copy()
    frame["sequence"] = frame["sequence"].str[:WINDOW]
    test = frame.sample(frac=0.4, random_state=SEED)
    return frame.drop(test.index).reset_index(drop=True), test.reset_index(drop=True)


def build_model() -> NeuralTreeModel:
    models = importlib.resources.files("antiberty") / "trained_models"
    root = {
        "type": "hf",
        "pretrained_path": str(models / "AntiBERTy_md_smooth"),
        "tokenizer_path": str(models / "vocab.txt"),
        "space_separated": True,
    }
    config = NeuralTreeConfig(
        roots={"antibody": root},
        branches={"property": {"type": "mlp", "out_dim": 64, "hidden_dim": 64}},
        leaves={"expr": {"type": "regressor", "branch": "property"}},
    )
    return NeuralTreeModel(config)


def run(mode: str, train: pd.DataFrame, test: pd.DataFrame) -> dict:
    torch.manual_seed(SEED)
    model = build_model()
    task = RegressionTask("expr", "expr", {"antibody": "sequence"}, ["expr_delta_meanF"])
    fit_tasks(model, [task], train)
    if mode == "lora":
        add_lora(model, r=8, lora_alpha=16)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-3}]
    else:
        groups = [
            {"params": list(model.roots.parameters()), "lr": 5e-5},
            {"params": [p for n, p in model.named_parameters() if not n.startswith("roots.")], "lr": 1e-3},
        ]
    trainable, total = count_parameters(model)
    collator = TreeTrainerCollator(model, [task])
    generator = torch.Generator().manual_seed(SEED)
    loader = DataLoader(tree_rows(train, [task]).to_dict("records"), batch_size=BATCH, shuffle=True,
                        collate_fn=collator, generator=generator)  # fmt: skip
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    start = time.perf_counter()
    model.train()
    for _ in range(EPOCHS):
        for batch in loader:
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    train_seconds = time.perf_counter() - start
    model.eval()
    predictions = []
    with torch.no_grad():
        for start_row in range(0, len(test), 64):
            rows = tree_rows(test.iloc[start_row : start_row + 64], [task]).to_dict("records")
            outputs = model(collator(rows)["root_inputs"])
            predictions.append(outputs.leaf_outputs["expr"].loc.mean(0)[:, 0].numpy())
    rho = spearmanr(np.concatenate(predictions), test["expr_delta_meanF"].to_numpy()).statistic
    return {"trainable_params": trainable, "total_params": total, "spearman": float(rho),
            "train_seconds": round(train_seconds, 1)}  # fmt: skip


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, test = rbd_rows()
    lora = run("lora", train, test)
    full = run("full", train, test)
    result = {
        "lora_trainable_params": lora["trainable_params"],
        "full_trainable_params": full["trainable_params"],
        "lora_metric": lora["spearman"],
        "full_metric": full["spearman"],
        "metric": f"Spearman rho, RBD expression (Starr 2020), sites 1-{WINDOW}, {len(test)} held-out single mutants",
        "total_params": full["total_params"],
        "lora_train_seconds": lora["train_seconds"],
        "full_train_seconds": full["train_seconds"],
        "train_rows": len(train),
        "test_rows": len(test),
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "root": "AntiBERTy (antiberty==0.1.3), LoRA r=8 alpha=16 on query/value",
        "device": "cpu",
    }
    out = ROOT / "bench" / "results" / "peft.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
