"""Contract tests shared by every corruption process, plus process-specific behaviour and compile checks."""

from __future__ import annotations

import pytest
import torch

from cortex.corruption.processes import (
    CORRUPTION_PROCESSES,
    GaussianCorruption,
    MaskCorruption,
    SubstitutionCorruption,
    build_corruption,
)
from cortex.data.tokenization import ProteinTokenizer

SEQUENCES = ["NITNLCPFGEVFNATRFASVYAWNRKRISNCVADYSVLYNSASFSTFK", "GCVIAWNRNNLDSKVGGNYNYL", "C<mask>PFGE.VF"]


@pytest.fixture(scope="module")
def tokenizer() -> ProteinTokenizer:
    return ProteinTokenizer()


@pytest.fixture(scope="module")
def batch(tokenizer):
    encoded = tokenizer(SEQUENCES, padding=True, return_tensors="pt")
    input_ids = encoded["input_ids"]
    is_corruptible = tokenizer.get_corruptible_mask(input_ids)
    # Forbid the first 3 positions on top of the token rule (like an `is_mutable` constraint).
    is_corruptible[:, :3] = False
    return input_ids, is_corruptible


def _make(name: str, tokenizer):
    return build_corruption(name, tokenizer)


def _input(process, input_ids, generator=None):
    if process.acts_on == "ids":
        return input_ids
    return torch.randn(*input_ids.shape, 8, generator=generator)


@pytest.mark.parametrize("name", sorted(CORRUPTION_PROCESSES))
class TestContract:
    def test_level_zero_is_identity(self, name, tokenizer, batch):
        process = _make(name, tokenizer)
        input_ids, is_corruptible = batch
        x = _input(process, input_ids, torch.Generator().manual_seed(0))
        noisy, is_corrupted = process.add_noise(
            x, torch.zeros(x.shape[0], dtype=torch.float64), is_corruptible, torch.Generator().manual_seed(1)
        )
        assert torch.equal(noisy, x)
        assert not is_corrupted.any()

    def test_forbidden_positions_never_change(self, name, tokenizer, batch):
        process = _make(name, tokenizer)
        input_ids, is_corruptible = batch
        x = _input(process, input_ids, torch.Generator().manual_seed(0))
        noisy, is_corrupted = process.add_noise(
            x, torch.ones(x.shape[0]), is_corruptible, torch.Generator().manual_seed(2)
        )
        assert is_corrupted.dtype == torch.bool and is_corrupted.shape == input_ids.shape
        assert not (is_corrupted & ~is_corruptible).any()
        assert torch.equal(noisy[~is_corruptible], x[~is_corruptible])
        # Level 1 selects every corruptible position.
        assert torch.equal(is_corrupted, is_corruptible)
        changed = noisy != x if process.acts_on == "ids" else (noisy != x).any(-1)
        assert not (changed & ~is_corrupted).any()

    def test_corrupted_fraction_matches_level(self, name, tokenizer):
        process = _make(name, tokenizer)
        input_ids = tokenizer(["ACDEFGHIKLMNPQRSTVWY" * 25] * 8, return_tensors="pt")["input_ids"]
        is_corruptible = torch.ones_like(input_ids, dtype=torch.bool)
        levels = torch.tensor([0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.8, 1.0], dtype=torch.float64)
        x = _input(process, input_ids, torch.Generator().manual_seed(0))
        noisy, is_corrupted = process.add_noise(x, levels, is_corruptible, torch.Generator().manual_seed(3))
        if process.acts_on == "ids":
            fraction = is_corrupted.double().mean(dim=1)
        else:
            # Embeddings: noisy - x = c (sqrt(var) eps - x) with x, eps ~ N(0, 1), so its std is c sqrt(var + 1).
            fraction = (noisy - x).double().flatten(1).std(dim=1) / (process.noise_variance + 1) ** 0.5
        # 500 positions per row: binomial std <= 0.023; 4 std tolerance.
        torch.testing.assert_close(fraction, levels, atol=0.09, rtol=0.0)
        assert fraction[0] == 0
        assert not is_corrupted[0].any() and is_corrupted[-1].all()

    def test_seeded_determinism(self, name, tokenizer, batch):
        process = _make(name, tokenizer)
        input_ids, is_corruptible = batch
        x = _input(process, input_ids, torch.Generator().manual_seed(0))
        level = torch.full((x.shape[0],), 0.5, dtype=torch.float64)
        first = process.add_noise(x, level, is_corruptible, torch.Generator().manual_seed(5))
        second = process.add_noise(x, level, is_corruptible, torch.Generator().manual_seed(5))
        other = process.add_noise(x, level, is_corruptible, torch.Generator().manual_seed(6))
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        assert not torch.equal(first[0], other[0])

    def test_state_dict_is_empty_and_levels_are_sampled(self, name, tokenizer):
        process = _make(name, tokenizer)
        assert process.state_dict() == {}
        levels = process.sample_noise_level(16, generator=torch.Generator().manual_seed(0))
        assert levels.shape == (16,) and levels.dtype == torch.float64
        assert ((levels >= 0) & (levels <= 1)).all()

    def test_bad_shapes_raise(self, name, tokenizer, batch):
        process = _make(name, tokenizer)
        input_ids, is_corruptible = batch
        x = _input(process, input_ids)
        with pytest.raises(ValueError, match="noise_level has shape"):
            process.add_noise(x, torch.zeros(x.shape[0] + 1), is_corruptible)
        with pytest.raises(ValueError, match="is_corruptible has shape"):
            process.add_noise(x, torch.zeros(x.shape[0]), is_corruptible[:, :-1])
        with pytest.raises(ValueError, match="is_corruptible has shape"):
            process.add_noise(x, torch.zeros(x.shape[0]), is_corruptible.long())


@pytest.mark.parametrize("name", sorted(CORRUPTION_PROCESSES))
def test_compiled_add_noise_matches_eager_without_recompiling(name, tokenizer, batch):
    torch._dynamo.reset()
    process = _make(name, tokenizer)
    input_ids, is_corruptible = batch
    x = _input(process, input_ids, torch.Generator().manual_seed(0))
    compiled = torch.compile(process.add_noise, fullgraph=True, backend="aot_eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for level in (0.0, 0.3, 1.0):
            noise_level = torch.full((x.shape[0],), level, dtype=torch.float64)
            torch.manual_seed(11)
            eager = process.add_noise(x, noise_level, is_corruptible)
            torch.manual_seed(11)
            traced = compiled(x, noise_level, is_corruptible)
            assert torch.equal(eager[0], traced[0]) and torch.equal(eager[1], traced[1])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CORRUPTION_PROCESSES))
def test_inductor_add_noise_matches_eager(name, tokenizer, batch):
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    process = _make(name, tokenizer)
    input_ids, is_corruptible = batch
    x = _input(process, input_ids, torch.Generator().manual_seed(0))
    compiled = torch.compile(process.add_noise, fullgraph=True)
    # fallback_random: inductor uses eager's RNG kernels, so the draws are comparable.
    with inductor_config.patch(fallback_random=True), torch._dynamo.config.patch(error_on_recompile=True):
        for level in (0.0, 0.3, 1.0):
            noise_level = torch.full((x.shape[0],), level, dtype=torch.float64)
            torch.manual_seed(11)
            eager = process.add_noise(x, noise_level, is_corruptible)
            torch.manual_seed(11)
            traced = compiled(x, noise_level, is_corruptible)
            torch.testing.assert_close(traced[0], eager[0])
            assert torch.equal(eager[1], traced[1])


def test_mask_writes_mask_token(tokenizer, batch):
    input_ids, is_corruptible = batch
    noisy, is_corrupted = MaskCorruption(tokenizer.mask_token_id).add_noise(
        input_ids, torch.full((3,), 0.5), is_corruptible, torch.Generator().manual_seed(0)
    )
    assert (noisy[is_corrupted] == tokenizer.mask_token_id).all()
    assert is_corrupted.any()


def test_blosum_substitutes_amino_acids_with_other_amino_acids(tokenizer):
    process = SubstitutionCorruption.from_blosum62(tokenizer)
    input_ids = tokenizer(["ACDEFGHIKLMNPQRSTVWY" * 10], return_tensors="pt")["input_ids"]
    noisy, is_corrupted = process.add_noise(
        input_ids,
        torch.ones(1),
        torch.ones_like(input_ids, dtype=torch.bool),
        torch.Generator().manual_seed(0),
    )
    assert is_corrupted.all()
    assert (noisy != input_ids).all()  # zero diagonal: a substitution always changes an amino acid
    canonical = torch.tensor([tokenizer.convert_tokens_to_ids(a) for a in "ACDEFGHIKLMNPQRSTVWY"])
    assert torch.isin(noisy, canonical).all()
    # Every sampled substitution has non-zero transition probability.
    assert (process.transition[input_ids, noisy] > 0).all()


def test_blosum_substitution_frequencies_follow_the_matrix(tokenizer):
    process = SubstitutionCorruption.from_blosum62(tokenizer)
    isoleucine = tokenizer.convert_tokens_to_ids("I")
    input_ids = torch.full((40, 500), isoleucine)
    noisy, _ = process.add_noise(
        input_ids,
        torch.ones(40),
        torch.ones_like(input_ids, dtype=torch.bool),
        torch.Generator().manual_seed(0),
    )
    counts = torch.bincount(noisy.flatten(), minlength=process.vocab_size).double() / noisy.numel()
    # 20000 draws: std of a frequency <= 0.0036.
    torch.testing.assert_close(counts, process.transition[isoleucine].double(), atol=0.015, rtol=0.0)


def test_uniform_never_selects_special_tokens(tokenizer):
    process = SubstitutionCorruption.uniform(tokenizer)
    input_ids = tokenizer(["<pad><cls>.<mask>ACD"], return_tensors="pt")["input_ids"]
    noisy, is_corrupted = process.add_noise(
        input_ids,
        torch.ones(1),
        torch.ones_like(input_ids, dtype=torch.bool),
        torch.Generator().manual_seed(0),
    )
    assert torch.equal(is_corrupted[0], torch.tensor([False] * 4 + [True] * 3))
    assert torch.equal(noisy[0, :4], input_ids[0, :4])
    assert process.token_is_corruptible[noisy[0, 4:]].all()


def test_gaussian_noise_formula():
    process = GaussianCorruption(noise_variance=4.0)
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))
    level = torch.tensor([0.25, 1.0])
    is_corruptible = torch.ones(2, 5, dtype=torch.bool)
    noisy, _ = process.add_noise(x, level, is_corruptible, torch.Generator().manual_seed(9))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    expected = (1 - level[:, None, None]) * x + level[:, None, None] * 2.0 * eps
    torch.testing.assert_close(noisy, expected)


def test_invalid_construction_raises(tokenizer):
    with pytest.raises(ValueError, match="unknown corruption process 'noise'"):
        build_corruption("noise", tokenizer)
    with pytest.raises(ValueError, match=r"row 1 \(a corruptible token\) sums to 0.5"):
        SubstitutionCorruption(torch.tensor([[0.0, 1.0], [0.5, 0.0]]))
    with pytest.raises(ValueError, match="expected \\(V, V\\)"):
        SubstitutionCorruption(torch.ones(3, 2))
    with pytest.raises(ValueError, match="noise_variance must be > 0, got -1"):
        GaussianCorruption(noise_variance=-1.0)
    with pytest.raises(ValueError, match="mask_token_id must be a non-negative int"):
        MaskCorruption(-3)
    with pytest.raises(ValueError, match="unknown noise schedule 'cosin'"):
        build_corruption("mask", tokenizer, schedule="cosin")
