"""Diagnostic for issue 4's RBD target: do pretrained-LM features transfer to RBD sites never seen in training?

On the position-held-out split of configs/data/rbd.yaml (GroupSplit on site_spike, 70/10/20, split seeds 0..3),
fits a ridge (alpha by leave-one-out CV on the training rows) from the frozen AntiBERTy (antiberty==0.1.3, the
pretrained weights this project can load offline) embedding of each single mutant at its mutated position, and
reports test Spearman per target beside the one-hot ridge floor (0 by construction on unseen sites: its
site-specific coefficients are never trained) and a mutant/wild-type amino-acid ridge (transferable by design).

    .venv/bin/python bench/rbd_plm_probe.py          # ~5 min on 1 CPU thread; writes bench/results/rbd_plm_probe.json
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
from sklearn.linear_model import RidgeCV
from transformers import BertModel, BertTokenizer

from cortex.data import GroupSplit

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("bind_delta_log10Ka", "expr_delta_meanF")
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def site_embeddings(frame: pd.DataFrame, batch_size: int = 32) -> np.ndarray:
    """(N, D) AntiBERTy last-layer embedding of each mutant at its mutated position."""
    models = importlib.resources.files("antiberty") / "trained_models"
    tokenizer = BertTokenizer(vocab_file=str(models / "vocab.txt"), do_lower_case=False)
    model = BertModel.from_pretrained(str(models / "AntiBERTy_md_smooth")).eval()
    positions = frame["mutant"].str[1:-1].astype(int).to_numpy()  # 1-based site in the RBD sequence
    out = []
    with torch.no_grad():
        for start in range(0, len(frame), batch_size):
            sequences = [" ".join(s) for s in frame["sequence"].iloc[start : start + batch_size]]
            encoded = tokenizer(sequences, return_tensors="pt", padding=True)
            hidden = model(**encoded).last_hidden_state  # (B, L + 2, D): [CLS] first
            index = torch.as_tensor(positions[start : start + batch_size])  # [CLS] offset cancels 1-based
            out.append(hidden[torch.arange(len(index)), index].numpy())
    return np.concatenate(out)


def amino_acid_features(frame: pd.DataFrame) -> np.ndarray:
    """(N, 40) one-hot wild-type and mutant amino acid (no site)."""
    features = np.zeros((len(frame), 40))
    for row, mutant in enumerate(frame["mutant"]):
        features[row, AMINO_ACIDS.index(mutant[0])] = 1
        features[row, 20 + AMINO_ACIDS.index(mutant[-1])] = 1
    return features


def test_spearman(features: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    scale = features[train].std(0) + 1e-6
    x = (features - features[train].mean(0)) / scale
    ridge = RidgeCV(alphas=np.logspace(-1, 5, 19)).fit(x[train], y[train])
    return float(spearmanr(ridge.predict(x[test]), y[test])[0])


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    frame = pd.read_csv(ROOT / "data" / "rbd_starr2020_bind_expr.csv.gz")
    frame = frame[~frame["sequence"].str.contains(r"\*")].reset_index(drop=True)
    embeddings = site_embeddings(frame)
    amino = amino_acid_features(frame)
    results: dict[str, dict[str, list[float]]] = {
        name: {target: [] for target in TARGETS} for name in ("antiberty_site", "amino_acid")
    }
    for seed in range(4):
        split = GroupSplit("site_spike", {"train": 0.7, "validation": 0.1, "test": 0.2}, seed=seed)(frame)
        for target in TARGETS:
            y = frame[target].to_numpy()
            labelled = np.flatnonzero(~np.isnan(y))
            train, test = np.intersect1d(split["train"], labelled), np.intersect1d(split["test"], labelled)
            results["antiberty_site"][target].append(test_spearman(embeddings, y, train, test))
            results["amino_acid"][target].append(test_spearman(amino, y, train, test))
    summary = {
        f"{name}_{target.split('_')[0]}_spearman_mean": float(np.mean(values))
        for name, per_target in results.items()
        for target, values in per_target.items()
    }
    summary.update(
        per_split_seed=results,
        onehot_ridge_floor="0 on unseen sites by construction (bench/results/rbd.json: 0.0 / 0.044 on split 0)",
        split="GroupSplit(site_spike, train 0.7 / validation 0.1 / test 0.2), split seeds 0-3",
        minutes=(time.perf_counter() - start) / 60,
        hardware="CPU, 1 thread",
    )
    out = ROOT / "bench" / "results" / "rbd_plm_probe.json"
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k.endswith("mean")}, indent=1))


if __name__ == "__main__":
    main()
