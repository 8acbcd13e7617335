"""One-hot ridge floor for a regression task: sequences one-hot encoded per position (L x 20 features, padded
to the longest), ridge regression per target with the penalty picked on the validation split, scored by
Spearman on the test split. Same splits as the neural runs (the task's data entry of the Hydra config)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def one_hot(sequences: pd.Series, length: int) -> np.ndarray:
    """(N, length * 20) float64; residues outside the 20 standard ones and padding are all-zero."""
    index = {aa: i for i, aa in enumerate(AMINO_ACIDS)}
    features = np.zeros((len(sequences), length, len(AMINO_ACIDS)))
    for row, sequence in enumerate(sequences):
        for position, residue in enumerate(sequence[:length]):
            if residue in index:
                features[row, position, index[residue]] = 1.0
    return features.reshape(len(sequences), -1)


def ridge_fit_predict(x: np.ndarray, y: np.ndarray, x_new: np.ndarray, alpha: float) -> np.ndarray:
    """Closed-form ridge with an unpenalised intercept (dual form when rows < features)."""
    mean_x, mean_y = x.mean(0), y.mean()
    xc, yc = x - mean_x, y - mean_y
    if xc.shape[0] < xc.shape[1]:
        weights = xc.T @ np.linalg.solve(xc @ xc.T + alpha * np.eye(xc.shape[0]), yc)
    else:
        weights = np.linalg.solve(xc.T @ xc + alpha * np.eye(xc.shape[1]), xc.T @ yc)
    return (x_new - mean_x) @ weights + mean_y


def ridge_floor(frames: dict[str, pd.DataFrame], sequence_column: str, target: str) -> dict[str, float]:
    """{"alpha", "validation_spearman", "test_spearman"} of one-hot ridge on train -> test for `target`."""
    labelled = {split: frame[frame[target].notna()] for split, frame in frames.items()}
    length = max(int(frame[sequence_column].str.len().max()) for frame in labelled.values() if len(frame))
    x = {split: one_hot(frame[sequence_column], length) for split, frame in labelled.items()}
    y = {split: frame[target].to_numpy(dtype=np.float64) for split, frame in labelled.items()}
    scores = {
        alpha: spearmanr(ridge_fit_predict(x["train"], y["train"], x["validation"], alpha), y["validation"])[
            0
        ]
        for alpha in ALPHAS
    }
    alpha = max(ALPHAS, key=lambda a: np.nan_to_num(scores[a], nan=-1.0))
    test = spearmanr(ridge_fit_predict(x["train"], y["train"], x["test"], alpha), y["test"])[0]
    return {"alpha": alpha, "validation_spearman": float(scores[alpha]), "test_spearman": float(test)}
