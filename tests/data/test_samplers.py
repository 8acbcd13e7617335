"""Round-robin minority upsampling: parity with the original (tests/parity/round_robin.json), balance on a real
imbalanced label, epochs, distributed shards, and the saved position a mid-epoch resume restores."""

import collections
import json
import pathlib

import pandas as pd
import pytest

from cortex.data.samplers import EpochShuffleSampler, MinorityUpsampler, group_indices, round_robin_longest

FIXTURE = json.loads((pathlib.Path(__file__).parents[1] / "parity" / "round_robin.json").read_text())
DATA = pathlib.Path(__file__).parents[2] / "data"


def _cases(kind):
    return [case for case in FIXTURE["cases"] if case["kind"] == kind]


@pytest.mark.parity
@pytest.mark.parametrize("case", _cases("round_robin_longest"), ids=lambda c: str(len(c["iterables"])))
def test_round_robin_longest_matches_original(case):
    if case.get("raises"):
        with pytest.raises(ValueError, match="empty"):
            list(round_robin_longest(case["iterables"]))
    else:
        assert list(round_robin_longest(case["iterables"])) == case["output"]


@pytest.mark.parity
@pytest.mark.parametrize("case", _cases("group_sizes") + _cases("groupby_partition"), ids=lambda c: c["kind"])
def test_minority_upsampler_matches_original(case):
    groups = case["index_list"]
    assert list(MinorityUpsampler(groups, shuffle=False)) == case["round_robin_longest"]
    for seed, epochs in case["randomized"].items():
        sampler = MinorityUpsampler(groups, shuffle=True, seed=int(seed))
        for epoch, expected in enumerate(epochs):
            sampler.set_epoch(epoch)
            assert list(sampler) == expected, (seed, epoch)
        # set_epoch jumps to any epoch, in any order, with the same result.
        fresh = MinorityUpsampler(groups, shuffle=True, seed=int(seed))
        for epoch in reversed(range(len(epochs))):
            assert fresh.epoch_indices(epoch) == epochs[epoch]


@pytest.mark.parity
def test_group_indices_matches_pandas_groupby():
    case = _cases("groupby_partition")[0]
    assert group_indices(case["partition_column"]) == case["index_list"]


def test_balances_gfp_bright_vs_dark():
    frame = pd.read_csv(DATA / "gfp_sarkisyan2016.csv.gz", usecols=["log_brightness", "tape_like_split"])
    # The TAPE-like training split (<= 3 mutations) is mostly bright: about 82% above 2.5.
    bright = (frame.loc[frame["tape_like_split"] == "train", "log_brightness"].head(3000) > 2.5).to_numpy()
    groups = group_indices(bright.tolist())
    sizes = sorted(len(g) for g in groups)
    assert sizes[0] * 3 < sizes[1], sizes  # the real label is imbalanced
    sampler = MinorityUpsampler(groups, seed=7)
    counts = collections.Counter(bright[sampler.epoch_indices(0)].tolist())
    assert abs(counts[True] - counts[False]) <= 1
    # The majority class is visited exactly once per epoch, the minority is cycled.
    majority = max(groups, key=len)
    assert sorted(i for i in sampler.epoch_indices(0) if i in set(majority)) == sorted(majority)
    assert sampler.epoch_indices(0) != sampler.epoch_indices(1)


@pytest.mark.parametrize("world_size", [2, 3])
def test_minority_upsampler_shards_are_balanced_and_equal_length(world_size):
    groups = [list(range(0, 11)), list(range(11, 14))]
    per_rank = [MinorityUpsampler(groups, seed=3, rank=r, world_size=world_size) for r in range(world_size)]
    for sampler in per_rank:
        sampler.set_epoch(2)
    epochs = [sampler.epoch_indices() for sampler in per_rank]
    assert len({len(e) for e in epochs}) == 1
    for indices in epochs:
        minority = sum(i >= 11 for i in indices)
        assert abs(minority - (len(indices) - minority)) <= 1
    # Together the ranks cover every majority row.
    assert set().union(*map(set, epochs)) >= set(range(11))


def test_epoch_shuffle_sampler_depends_on_seed_and_epoch_only():
    sampler = EpochShuffleSampler(10, seed=5)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(sampler) == list(range(10))
    sampler.set_epoch(0)
    assert list(sampler) == first
    shards = [EpochShuffleSampler(10, seed=5, rank=r, world_size=4) for r in range(4)]
    assert [len(s) for s in shards] == [3, 3, 3, 3]
    assert set().union(*(set(s) for s in shards)) == set(range(10))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        MinorityUpsampler([[0]], rank=2, world_size=2)
    with pytest.raises(ValueError, match="row 1 is missing"):
        group_indices(["a", None])
    with pytest.raises(ValueError, match="epoch=-1"):
        EpochShuffleSampler(3).set_epoch(-1)


def _samplers(rank=0, world_size=1):
    groups = [list(range(0, 11)), list(range(11, 14)), [14, 15]]
    return [
        MinorityUpsampler(groups, seed=3, rank=rank, world_size=world_size),
        EpochShuffleSampler(13, seed=3, rank=rank, world_size=world_size),
    ]


@pytest.mark.parametrize("taken", [0, 1, 4, 100])
@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (1, 2)])
def test_sampler_state_round_trip_yields_the_remaining_indices(taken, rank, world_size):
    for sampler, fresh in zip(_samplers(rank, world_size), _samplers(rank, world_size), strict=True):
        sampler.set_epoch(2)
        epoch = list(sampler)
        taken = min(taken, len(epoch))
        iterator = iter(sampler)
        head = [next(iterator) for _ in range(taken)]
        state = sampler.state_dict()
        assert state == {"epoch": 2, "num_yielded": taken}
        fresh.load_state_dict(state)
        assert fresh.state_dict() == state  # a pending position is what a checkpoint taken now would hold
        assert fresh.epoch == 2 and len(fresh) == len(epoch)
        assert head + list(fresh) == epoch
        assert fresh.state_dict() == {"epoch": 2, "num_yielded": len(epoch)}
        # The position applies once: the next iteration is the whole epoch again.
        assert list(fresh) == epoch


def test_sampler_position_is_dropped_when_another_epoch_starts():
    for sampler, fresh in zip(_samplers(), _samplers(), strict=True):
        sampler.set_epoch(1)
        iterator = iter(sampler)
        next(iterator), next(iterator)
        fresh.load_state_dict(sampler.state_dict())
        fresh.set_epoch(2)
        sampler.set_epoch(2)
        assert list(fresh) == list(sampler)


def test_bad_sampler_state_raises_naming_the_value():
    for sampler in _samplers():
        with pytest.raises(ValueError, match=r"num_yielded=99 for epoch 0; expected 0 <= num_yielded <= "):
            sampler.load_state_dict({"epoch": 0, "num_yielded": 99})
        with pytest.raises(ValueError, match=r"got keys \['epoch'\]"):
            sampler.load_state_dict({"epoch": 0})
        with pytest.raises(ValueError, match="epoch=-1"):
            sampler.load_state_dict({"epoch": -1, "num_yielded": 0})
