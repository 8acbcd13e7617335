"""GB1 oracle on the real landscape (data/gb1_wu2016_flip.csv.gz)."""

import math

import pandas as pd
import pytest
import torch

from cortex.benchmarks.gb1 import GB1_DATA_PATH, GB1_SITES, GB1Oracle
from cortex.data.tokenization import CANONICAL_AMINO_ACIDS, ProteinTokenizer


@pytest.fixture(scope="module")
def oracle() -> GB1Oracle:
    return GB1Oracle()


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_csv(GB1_DATA_PATH, usecols=["Variants", "Fitness"])


def test_wild_type_and_sites(oracle):
    assert len(oracle.wild_type) == 56
    assert oracle.wild_type_variant == "VDGV"
    assert oracle.wild_type_fitness == 1.0
    assert oracle.is_mutable.nonzero().squeeze(-1).tolist() == list(GB1_SITES)
    assert float(oracle([oracle.wild_type])[0]) == 1.0


def test_lookups_match_the_table(oracle, frame):
    rows = frame.sample(n=200, random_state=0)
    sequences = [oracle.variant_to_sequence(v) for v in rows["Variants"]]
    expected = torch.tensor(rows["Fitness"].to_numpy(), dtype=torch.float32)
    assert torch.equal(oracle(sequences), expected)
    assert torch.equal(oracle.lookup(list(rows["Variants"])), expected)
    # Token ids give the same values as strings.
    ids = ProteinTokenizer()(sequences, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(oracle(ids), expected)


def test_unmeasured_variants_are_nan(oracle, frame):
    measured = set(frame["Variants"])
    unmeasured = [
        a + b + c + d
        for a in CANONICAL_AMINO_ACIDS
        for b in CANONICAL_AMINO_ACIDS
        for c in CANONICAL_AMINO_ACIDS[:2]
        for d in CANONICAL_AMINO_ACIDS
        if a + b + c + d not in measured
    ][:50]
    assert len(unmeasured) == 50
    values = oracle([oracle.variant_to_sequence(v) for v in unmeasured])
    assert values.isnan().all()
    assert oracle.table.isnan().sum() == 20**4 - oracle.num_measured == 160_000 - 149_361


def test_changes_outside_the_sites_are_unknown(oracle):
    mutant = list(oracle.wild_type)
    mutant[0] = "A"
    values = oracle(["".join(mutant), oracle.wild_type])
    assert math.isnan(values[0]) and values[1] == 1.0


def test_top_one_percent_threshold(oracle, frame):
    threshold = oracle.top_fraction_threshold(0.01)
    assert threshold == pytest.approx(frame["Fitness"].quantile(0.99), rel=1e-9)
    assert (frame["Fitness"] >= threshold).mean() == pytest.approx(0.01, abs=1e-4)


def test_starting_variants(oracle):
    seeds = oracle.sample_seeds(64, seed=3)
    assert len(seeds) == len(set(seeds)) == 64
    values = oracle(seeds)
    assert not values.isnan().any()
    assert (values < oracle.wild_type_fitness).all()
    assert seeds == oracle.sample_seeds(64, seed=3)
    assert seeds != oracle.sample_seeds(64, seed=4)
    for seed in seeds:
        assert [i for i, (a, b) in enumerate(zip(seed, oracle.wild_type)) if a != b] == [
            i for i in GB1_SITES if seed[i] != oracle.wild_type[i]
        ]


def test_bad_input(oracle):
    with pytest.raises(ValueError, match=r"candidates\[1\] has length 55; expected the 56-residue"):
        oracle([oracle.wild_type, oracle.wild_type[:-1]])
    with pytest.raises(ValueError, match=r"candidates\[0\] has 'X' at position 3"):
        oracle(["MQYXLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"])
    ids = ProteinTokenizer()([oracle.wild_type], add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids[0, 5] = 31  # <mask>
    with pytest.raises(ValueError, match=r"candidates\[0, 5\] = 31 is not the id of a canonical amino acid"):
        oracle(ids)
    with pytest.raises(ValueError, match=r"shape \(1, 10\)"):
        oracle(ids[:, :10])
    with pytest.raises(TypeError, match=r"dtype torch\.float32"):
        oracle(ids.float())
    with pytest.raises(TypeError, match="single str"):
        oracle(oracle.wild_type)
    with pytest.raises(TypeError, match="got dict"):
        oracle({"a": oracle.wild_type})
    with pytest.raises(ValueError, match=r"variants\[0\] = 'VDG'"):
        oracle.lookup(["VDG"])
    with pytest.raises(ValueError, match="num_seeds must be in"):
        oracle.sample_seeds(10**6)
    with pytest.raises(FileNotFoundError, match="GB1 data not found"):
        GB1Oracle(path="/nonexistent/gb1.csv.gz")
