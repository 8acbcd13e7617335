"""Ehrlich functions: golden values recorded with the reference (pytorch-holo 0.0.5), input checks, invariants."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cortex.benchmarks.ehrlich import EHRLICH_INSTANCES, Ehrlich, is_primitive, sample_dmp

GOLDEN_DIR = Path(__file__).parent / "golden"
GOLDEN_META = json.loads((GOLDEN_DIR / "ehrlich.json").read_text())
CASES = GOLDEN_META["cases"]
SEQUENCE_SETS = ["initial", "random", "mutant", "spliced"]


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN_DIR / "ehrlich.safetensors"))


def build(case: dict, **kwargs) -> Ehrlich:
    return Ehrlich(
        num_states=case["num_states"],
        dim=case["dim"],
        num_motifs=case["num_motifs"],
        motif_length=case["motif_length"],
        quantization=case["quantization"],
        random_seed=case["random_seed"],
        **kwargs,
    )


def sequences(golden: dict, name: str, which: str) -> torch.Tensor:
    key = f"{name}/initial_solution" if which == "initial" else f"{name}/{which}_x"
    return golden[key].long()


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_instance_matches_reference(case, golden):
    fn = build(case)
    name = case["name"]
    assert torch.equal(fn.transition_matrix, golden[f"{name}/transition_matrix"])
    assert torch.equal(fn.stationary_dist, golden[f"{name}/stationary_dist"])
    assert torch.equal(fn.motifs, golden[f"{name}/motifs"])
    assert torch.equal(fn.spacings, golden[f"{name}/spacings"])
    assert torch.equal(fn.optimal_solution(), golden[f"{name}/optimal_solution"].long())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_values_and_feasibility_match_reference(case, golden):
    fn = build(case)
    epistatic = build(case, epistasis_factor=GOLDEN_META["epistasis_factor_of_epistatic_values"])
    name = case["name"]
    for which in SEQUENCE_SETS:
        x = sequences(golden, name, which)
        expected = golden[f"{name}/{which}_values"]
        values = fn(x)
        assert values.dtype == torch.float32
        assert torch.equal(values, expected), which
        assert torch.equal(fn.is_feasible(x), expected > -math.inf), which
        assert torch.equal(epistatic(x), golden[f"{name}/{which}_epistatic_values"]), which
    assert float(fn(fn.optimal_solution().unsqueeze(0))) == float(golden[f"{name}/optimal_value"]) == 1.0


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_initial_solution_matches_reference(case, golden):
    fn = build(case)
    samples = fn.initial_solution(case["num_sequences"])
    assert torch.equal(samples, golden[f"{case['name']}/initial_solution"].long())
    assert fn.is_feasible(samples).all()
    # Deterministic without a generator (the reference reseeds on every call); a generator varies it.
    assert torch.equal(fn.initial_solution(case["num_sequences"]), samples)
    other = fn.initial_solution(4, generator=torch.Generator().manual_seed(case["random_seed"] + 1))
    assert not torch.equal(other, fn.initial_solution(4))
    assert fn.is_feasible(other).all()


def test_golden_sets_cover_feasible_infeasible_and_high_values(golden):
    # Guards the golden file itself: the comparison above is only informative if the values vary.
    for case in CASES:
        name = case["name"]
        values = torch.cat([golden[f"{name}/{which}_values"] for which in SEQUENCE_SETS])
        assert (values == -math.inf).any() and (values > -math.inf).any(), name
        assert values.unique().numel() >= 3, name


def test_presets_and_names():
    for level, name in EHRLICH_INSTANCES.items():
        fn = Ehrlich.from_name(level, random_seed=3)
        assert fn.name == name
        assert Ehrlich.from_name(name, random_seed=3).name == name
    hard = Ehrlich.from_name("hard")
    assert (hard.num_states, hard.dim, hard.motif_length, hard.num_motifs, hard.quantization) == (
        32,
        128,
        8,
        8,
        8,
    )
    with pytest.raises(ValueError, match="unknown Ehrlich instance 'ehr_v-32'"):
        Ehrlich.from_name("ehr_v-32")


def test_planting_a_motif_at_its_spacing_counts_it():
    fn = Ehrlich(num_states=20, dim=48, num_motifs=3, motif_length=4, random_seed=5)
    x = fn.initial_solution(8)
    before = fn.motif_presence(x)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), fn.spacings[1].cumsum(0)])
    x[:, 5 + offsets] = fn.motifs[1]
    after = fn.motif_presence(x)
    assert torch.equal(after[:, 1], torch.ones(8))
    assert torch.equal(after[:, [0, 2]] >= 0, torch.ones(8, 2, dtype=torch.bool))
    assert (after[:, 1] >= before[:, 1]).all()


def test_quantization_levels():
    fn = Ehrlich(num_states=32, dim=32, num_motifs=2, motif_length=4, quantization=2, random_seed=0)
    x = fn.initial_solution(256)
    levels = fn.motif_presence(x).unique()
    assert set(levels.tolist()) <= {0.0, 0.5, 1.0}


def test_dmp_samples_follow_the_transition_support():
    fn = Ehrlich(num_states=8, dim=16, num_motifs=2, motif_length=2, random_seed=1)
    samples = sample_dmp(fn.stationary_dist, fn.transition_matrix, 512, 16, torch.Generator().manual_seed(0))
    assert fn.is_feasible(samples).all()
    # Each row keeps a wrapped band of 2*int(0.4 v)+1 next states plus the diagonal.
    allowed = (fn.transition_matrix > 0).sum(-1)
    assert ((allowed >= 2 * 3 + 1) & (allowed <= 2 * 3 + 2)).all()
    assert torch.allclose(fn.transition_matrix.sum(-1), torch.ones(8))
    assert torch.allclose(fn.stationary_dist @ fn.transition_matrix, fn.stationary_dist, atol=1e-5)


def test_is_primitive():
    cycle = torch.roll(torch.eye(3, dtype=torch.bool), 1, dims=1)
    assert not is_primitive(cycle)  # periodic
    assert is_primitive(cycle | torch.eye(3, dtype=torch.bool))
    assert not is_primitive(torch.eye(3, dtype=torch.bool))  # reducible


def test_bad_candidates_are_rejected():
    fn = Ehrlich.from_name("easy")
    with pytest.raises(ValueError, match=r"shape \(2, 31\); expected \(B, 32\)"):
        fn(torch.zeros(2, 31, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(32,\)"):
        fn(torch.zeros(32, dtype=torch.long))
    bad = torch.zeros(3, 32, dtype=torch.long)
    bad[2, 7] = 32
    with pytest.raises(ValueError, match=r"candidates\[2, 7\] = 32 is out of the vocabulary"):
        fn(bad)
    with pytest.raises(TypeError, match=r"dtype torch\.float32"):
        fn(torch.zeros(2, 32))
    with pytest.raises(TypeError, match=r"got list.*need an alphabet"):
        fn([[0] * 32])
    assert fn.num_evaluations == 0


def test_strings_with_an_alphabet():
    alphabet = "LAGVSERTIDPKQNFYMHWC"
    fn = Ehrlich(num_states=20, dim=32, num_motifs=2, motif_length=4, random_seed=0, alphabet=alphabet)
    x = fn.initial_solution(5)
    strings = fn.decode(x)
    assert torch.equal(fn(strings), fn(x))
    with pytest.raises(ValueError, match=r"candidates\[1\] has length 3; expected 32"):
        fn([strings[0], "LAG"])
    with pytest.raises(ValueError, match=r"candidates\[0\] has 'X' at position 2"):
        fn(["LAX" + strings[0][3:]])
    with pytest.raises(TypeError, match="single str"):
        fn(strings[0])
    with pytest.raises(TypeError, match=r"candidates\[0\] is int"):
        fn([3])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"motif_length": 1}, "motif_length must be an int >= 2"),
        ({"quantization": 5}, "quantization must be <= motif_length=4"),
        ({"dim": 7}, "dim=7 cannot hold 2 motifs of length 4"),
        ({"alphabet": "AB"}, "alphabet must have 8 distinct characters"),
        ({"num_states": 1}, "num_states must be an int >= 2"),
    ],
)
def test_bad_construction_arguments(kwargs, match):
    arguments = {"num_states": 8, "dim": 16, "num_motifs": 2, "motif_length": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        Ehrlich(**arguments)
