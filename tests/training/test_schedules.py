import itertools
import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from cortex.training.schedules import cosine_with_warmup, warmup_cosine_scheduler


def _lrs(scheduler, optimizer, n):
    lrs = []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize(("warmup", "total"), [(0, 5), (1, 2), (3, 17), (10, 128)])
def test_multiplier_matches_transformers(warmup, total):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    for step in range(total + 1):
        assert cosine_with_warmup(step, warmup, total) == pytest.approx(
            reference.lr_lambdas[0](step), abs=1e-12
        )


def test_epoch_schedule_reproduces_original_appendix_c():
    # Original: W=10, S=128, stepped at epoch start -> epoch e trains with lambda(e + 1).
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine_scheduler(optimizer, 10, 128)
    lrs = _lrs(scheduler, optimizer, 128)
    assert lrs[:10] == pytest.approx([0.1 * (e + 1) for e in range(10)])
    assert lrs[10] == pytest.approx(0.5 * (1 + math.cos(math.pi / 118)))
    assert lrs[127] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))


@pytest.mark.parametrize(
    ("warmup", "total", "key"),
    [(-1, 5, "num_warmup_steps=-1"), (0, 0, "num_training_steps=0"), (6, 5, "num_warmup_steps=6")],
)
def test_bad_values_name_the_key(warmup, total, key):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match=key):
        warmup_cosine_scheduler(optimizer, warmup, total)
