"""The BlackBox interface: chunking, budget accounting, worker processes, a user's own function."""

import pytest
import torch

from cortex.benchmarks.blackbox import BudgetExceededError, FunctionBlackBox
from cortex.benchmarks.ehrlich import Ehrlich


def count_hydrophobic(sequences: list[str]) -> list[float]:
    """A stand-in for a user's assay: the number of L, I, V, F residues per sequence."""
    return [float(sum(residue in "LIVF" for residue in sequence)) for sequence in sequences]


def test_function_black_box_chunks_and_counts():
    box = FunctionBlackBox(
        count_hydrophobic, length=4, alphabet="ACDEFGHIKLMNPQRSTVWY", batch_size=2, budget=5
    )
    values = box(["LLAA", "IVFA", "AAAA"])
    assert torch.equal(values, torch.tensor([2.0, 3.0, 0.0]))
    assert box.num_evaluations == 3 and box.remaining_budget == 2
    with pytest.raises(
        BudgetExceededError, match="evaluating 3 candidates would exceed the budget of 5 evaluations"
    ):
        box(["LLLL", "AAAA", "CCCC"])
    assert box.num_evaluations == 3  # nothing was evaluated
    box(["LLLL", "AAAA"])
    assert box.remaining_budget == 0


def test_function_black_box_rejects_bad_input():
    box = FunctionBlackBox(count_hydrophobic, length=4, alphabet="ACDEFGHIKLMNPQRSTVWY")
    with pytest.raises(ValueError, match=r"candidates\[1\] has length 3; expected 4"):
        box(["LLAA", "LLA"])
    with pytest.raises(ValueError, match=r"candidates\[0\] has 'B' at position 1"):
        box(["LBAA"])
    with pytest.raises(TypeError, match="got int"):
        box(7)
    with pytest.raises(TypeError, match="single str"):
        box("LLAA")


def test_wrong_output_shape_is_reported():
    box = FunctionBlackBox(lambda sequences: [1.0] * (len(sequences) + 1))
    with pytest.raises(
        ValueError, match=r"returned \(3,\) for a chunk of 2 candidates; expected a tensor of shape \(2,\)"
    ):
        box(["A", "C"])


@pytest.mark.slow  # spawned workers import torch: 10-40 s on 2 shared cores
def test_worker_processes_give_the_same_values():
    serial = Ehrlich.from_name("easy", random_seed=1, batch_size=32)
    x = torch.cat([serial.initial_solution(64), serial.random_solution(64, torch.Generator().manual_seed(0))])
    with Ehrlich.from_name("easy", random_seed=1, batch_size=32, num_workers=2) as parallel:
        assert torch.equal(parallel(x), serial(x))
        assert parallel.num_evaluations == 128


@pytest.mark.slow
def test_spawned_workers_run_a_user_function():
    with FunctionBlackBox(count_hydrophobic, batch_size=1, num_workers=2, start_method="spawn") as box:
        assert torch.equal(box(["LV", "AA", "FC"]), torch.tensor([2.0, 0.0, 1.0]))
