"""BLOSUM62 tables and substitution parity with the original cortex (spec 5.5, fixture blosum_substitution)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cortex.corruption.blosum import (
    BLOSUM62_SCORES,
    blosum62_scores,
    blosum62_transition_matrix,
    vocab_transition_matrix,
)
from cortex.corruption.processes import MaskCorruption, SubstitutionCorruption
from cortex.data.tokenization import ProteinTokenizer

PARITY = Path(__file__).resolve().parents[1] / "parity"


@pytest.fixture(scope="module")
def tokenizer() -> ProteinTokenizer:
    return ProteinTokenizer()


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads((PARITY / "blosum_substitution.json").read_text())
    return meta, load_file(str(PARITY / "blosum_substitution.safetensors"))


def test_scores_are_symmetric_and_standard():
    scores = torch.tensor(BLOSUM62_SCORES)
    assert torch.equal(scores, scores.T)
    dayhoff = blosum62_scores()
    assert dayhoff[0, 0] == 9  # C-C
    assert dayhoff[18, 18] == 11  # W-W


def test_transition_rows_are_distributions_with_zero_diagonal(tokenizer):
    matrix = vocab_transition_matrix(tokenizer)
    torch.testing.assert_close(matrix.sum(-1), torch.ones(len(tokenizer)))
    amino_acid_ids = tokenizer.convert_tokens_to_ids(list("ACDEFGHIKLMNPQRSTVWY"))
    assert (matrix[amino_acid_ids, amino_acid_ids] == 0).all()
    pad = tokenizer.pad_token_id
    assert matrix[pad, pad] == 1


@pytest.mark.parity
def test_tables_match_original(fixture, tokenizer):
    meta, tensors = fixture
    order = "".join(meta["aa_order_20"])
    assert torch.equal(blosum62_scores(order), tensors["blosum62_scores_20"])  # all 210 pairs
    torch.testing.assert_close(
        blosum62_transition_matrix(order), tensors["blosum62_transition_20"], rtol=1e-6, atol=1e-7
    )
    assert tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) == meta["vocab"]
    torch.testing.assert_close(
        vocab_transition_matrix(tokenizer), tensors["vocab_transition_matrix"], rtol=1e-6, atol=1e-7
    )
    uniform = SubstitutionCorruption.uniform(tokenizer)
    torch.testing.assert_close(
        uniform.transition, tensors["uniform_substitution_matrix"], rtol=1e-6, atol=1e-7
    )
    assert torch.equal(tokenizer.corruptible_token_mask, tensors["vocab_corruptible"])


@pytest.mark.parity
@pytest.mark.parametrize(
    ("source", "target", "probability"),
    [("I", "V", 0.2500), ("I", "L", 0.2485), ("I", "A", 0.0750), ("A", "S", 0.1304), ("A", "G", 0.0992),
     ("A", "V", 0.0964), ("W", "Y", 0.1228), ("W", "F", 0.1148)],
)  # fmt: skip
def test_reference_rows(tokenizer, source, target, probability):
    matrix = vocab_transition_matrix(tokenizer)
    ids = tokenizer.convert_tokens_to_ids([source, target])
    assert matrix[ids[0], ids[1]].item() == pytest.approx(probability, abs=5e-5)


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["blosum", "uniform"])
def test_seeded_substitution_matches_original(fixture, tokenizer, kind):
    meta, tensors = fixture
    example = meta["example"]
    process = (
        SubstitutionCorruption.from_blosum62(tokenizer)
        if kind == "blosum"
        else SubstitutionCorruption.uniform(tokenizer)
    )
    x = tensors["example.x_start"]
    # The original's process consults only its own excluded ids, so every position is allowed here.
    noisy, is_corrupted = process.add_noise(
        x,
        torch.full((x.shape[0],), example["corrupt_frac"]),
        torch.ones_like(x, dtype=torch.bool),
        generator=torch.Generator().manual_seed(example["seed"]),
    )
    assert torch.equal(is_corrupted, tensors[f"example.{kind}_is_corrupted"])
    assert torch.equal(noisy, tensors[f"example.{kind}_x_corrupt"])


@pytest.mark.parity
def test_seeded_mask_matches_original(tokenizer):
    meta = json.loads((PARITY / "noise_schedule.json").read_text())
    tensors = load_file(str(PARITY / "noise_schedule.safetensors"))
    x = tensors["mask_example.x_start"]
    is_corruptible = tokenizer.get_corruptible_mask(x)
    assert torch.equal(is_corruptible, tensors["mask_example.corruption_allowed"])
    seed = meta["mask_example"]["seed"]
    noisy, is_corrupted = MaskCorruption(tokenizer.mask_token_id).add_noise(
        x, tensors["mask_example.corrupt_frac"], is_corruptible, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(is_corrupted, tensors["mask_example.is_corrupted"])
    assert torch.equal(noisy, tensors["mask_example.x_corrupt"])
