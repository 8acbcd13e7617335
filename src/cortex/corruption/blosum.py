"""BLOSUM62 scores and the substitution transition matrices derived from them (spec 5.5).

Henikoff & Henikoff (1992), "Amino acid substitution matrices from protein blocks", PNAS 89:10915.
The scores are the standard NCBI BLOSUM62 table (half-bit units).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

# NCBI order of the 20 canonical amino acids, rows/columns of BLOSUM62_SCORES.
NCBI_ORDER: str = "ARNDCQEGHILKMFPSTWYV"
# The original's Dayhoff-group order C | AGPST | DENQ | HKR | ILMV | FWY (spec 5.5), used by its 20x20 tables.
DAYHOFF_ORDER: str = "CAGPSTDENQHKRILMVFWY"

BLOSUM62_SCORES: tuple[tuple[int, ...], ...] = (
    # A   R   N   D   C   Q   E   G   H   I   L   K   M   F   P   S   T   W   Y   V
    ( 4, -1, -2, -2,  0, -1, -1,  0, -2, -1, -1, -1, -1, -2, -1,  1,  0, -3, -2,  0),  # A
    (-1,  5,  0, -2, -3,  1,  0, -2,  0, -3, -2,  2, -1, -3, -2, -1, -1, -3, -2, -3),  # R
    (-2,  0,  6,  1, -3,  0,  0,  0,  1, -3, -3,  0, -2, -3, -2,  1,  0, -4, -2, -3),  # N
    (-2, -2,  1,  6, -3,  0,  2, -1, -1, -3, -4, -1, -3, -3, -1,  0, -1, -4, -3, -3),  # D
    ( 0, -3, -3, -3,  9, -3, -4, -3, -3, -1, -1, -3, -1, -2, -3, -1, -1, -2, -2, -1),  # C
    (-1,  1,  0,  0, -3,  5,  2, -2,  0, -3, -2,  1,  0, -3, -1,  0, -1, -2, -1, -2),  # Q
    (-1,  0,  0,  2, -4,  2,  5, -2,  0, -3, -3,  1, -2, -3, -1,  0, -1, -3, -2, -2),  # E
    ( 0, -2,  0, -1, -3, -2, -2,  6, -2, -4, -4, -2, -3, -3, -2,  0, -2, -2, -3, -3),  # G
    (-2,  0,  1, -1, -3,  0,  0, -2,  8, -3, -3, -1, -2, -1, -2, -1, -2, -2,  2, -3),  # H
    (-1, -3, -3, -3, -1, -3, -3, -4, -3,  4,  2, -3,  1,  0, -3, -2, -1, -3, -1,  3),  # I
    (-1, -2, -3, -4, -1, -2, -3, -4, -3,  2,  4, -2,  2,  0, -3, -2, -1, -2, -1,  1),  # L
    (-1,  2,  0, -1, -3,  1,  1, -2, -1, -3, -2,  5, -1, -3, -1,  0, -1, -3, -2, -2),  # K
    (-1, -1, -2, -3, -1,  0, -2, -3, -2,  1,  2, -1,  5,  0, -2, -1, -1, -1, -1,  1),  # M
    (-2, -3, -3, -3, -2, -3, -3, -3, -1,  0,  0, -3,  0,  6, -4, -2, -2,  1,  3, -1),  # F
    (-1, -2, -2, -1, -3, -1, -1, -2, -2, -3, -3, -1, -2, -4,  7, -1, -1, -4, -3, -2),  # P
    ( 1, -1,  1,  0, -1,  0,  0,  0, -1, -2, -2,  0, -1, -2, -1,  4,  1, -3, -2, -2),  # S
    ( 0, -1,  0, -1, -1, -1, -1, -2, -2, -1, -1, -1, -1, -2, -1,  1,  5, -2, -2,  0),  # T
    (-3, -3, -4, -4, -2, -2, -3, -2, -2, -3, -2, -3, -1,  1, -4, -3, -2, 11,  2, -3),  # W
    (-2, -2, -2, -3, -2, -1, -2, -3,  2, -1, -1, -2, -1,  3, -3, -2, -2,  2,  7, -1),  # Y
    ( 0, -3, -3, -3, -1, -2, -2, -3, -3,  3,  1, -2,  1, -1, -2, -2,  0, -3, -1,  4),  # V
)  # fmt: skip

# Background amino-acid frequencies used by the original (spec 5.5, STANDARD_AA_FREQS).
BACKGROUND_FREQUENCIES: dict[str, float] = {
    "A": 0.0825, "R": 0.0553, "N": 0.0406, "D": 0.0545, "C": 0.0137, "Q": 0.0393, "E": 0.0675,
    "G": 0.0707, "H": 0.0227, "I": 0.0595, "L": 0.0966, "K": 0.0584, "M": 0.0242, "F": 0.0386,
    "P": 0.0470, "S": 0.0657, "T": 0.0534, "W": 0.0108, "Y": 0.0292, "V": 0.0687,
}  # fmt: skip


def _check_order(order: str) -> None:
    if sorted(order) != sorted(NCBI_ORDER):
        raise ValueError(f"amino-acid order must be a permutation of {NCBI_ORDER!r}, got {order!r}")


def blosum62_scores(order: str = DAYHOFF_ORDER) -> torch.Tensor:
    """(20, 20) int8 symmetric BLOSUM62 scores with rows/columns in `order`."""
    _check_order(order)
    ncbi = torch.tensor(BLOSUM62_SCORES, dtype=torch.int8)
    index = torch.tensor([NCBI_ORDER.index(aa) for aa in order])
    return ncbi[index][:, index]


def background_frequencies(order: str = DAYHOFF_ORDER) -> torch.Tensor:
    """(20,) float32 background frequencies in `order`."""
    _check_order(order)
    return torch.tensor([BACKGROUND_FREQUENCIES[aa] for aa in order], dtype=torch.float32)


def blosum62_transition_matrix(order: str = DAYHOFF_ORDER) -> torch.Tensor:
    """(20, 20) float32 substitution probabilities P[i, j] = P(i -> j), rows summing to 1, zero diagonal.

    P[i, j] is proportional to 2^(s_ij / 2) f_j for j != i (odds ratio from half-bit scores times the
    background frequency of the target residue), as the original's `create_blosum62_transition_matrix`.
    """
    odds = torch.pow(2.0, blosum62_scores(order).float() / 2)
    odds.fill_diagonal_(0.0)
    weighted = odds * background_frequencies(order)[None, :]
    return weighted / weighted.sum(dim=-1, keepdim=True)


def vocab_transition_matrix(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """(V, V) float32 transition matrix indexed by the tokenizer's token ids.

    Rows of the 20 canonical amino acids (tokens spelled as one upper-case letter) hold their BLOSUM62
    probabilities restricted to the amino acids present in the vocabulary and renormalised; every other token
    (specials, ambiguous residues, gaps) keeps an identity row, so it "substitutes" with itself.
    """
    vocab = tokenizer.get_vocab()
    vocab_size = len(tokenizer)
    present = [aa for aa in DAYHOFF_ORDER if aa in vocab]
    if len(present) < 2:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has {len(present)} canonical amino-acid tokens {present}; "
            "a BLOSUM62 substitution matrix needs at least 2 single-letter amino-acid tokens"
        )
    matrix = torch.eye(vocab_size, dtype=torch.float32)
    # Computed in the original's Dayhoff order so that float32 sums round identically.
    probs = blosum62_transition_matrix(DAYHOFF_ORDER)
    rows = torch.tensor([DAYHOFF_ORDER.index(aa) for aa in present])
    ids = torch.tensor([vocab[aa] for aa in present])
    block = probs[rows][:, rows]
    matrix[ids] = 0.0
    matrix[ids.unsqueeze(1), ids.unsqueeze(0)] = block
    # Renormalise whole rows (sums in vocabulary order, as the original) in case amino acids are missing.
    matrix[ids] = matrix[ids] / matrix[ids].sum(dim=-1, keepdim=True)
    return matrix
