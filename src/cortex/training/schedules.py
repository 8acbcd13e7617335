"""Learning-rate schedules: linear warm-up then cosine decay (spec section 6.4, appendix A7).

The multiplier is the one of `transformers.get_cosine_schedule_with_warmup` (num_cycles 0.5):

    lambda(s) = s / max(1, W)                                   for s < W
    lambda(s) = max(0, 0.5 * (1 + cos(pi * (s - W) / max(1, S - W))))   otherwise

The original stepped its scheduler at the START of every epoch, so epoch e trained with lambda(e + 1):
warm-up over W epochs, full rate at epoch W - 1, cosine decay, last epoch at rate 0 (appendix C). Here the
same shift is used for both intervals: the i-th (0-based) optimizer step, or epoch, trains with
lambda(i + 1), so `interval="epoch"` reproduces the original and `interval="step"` never wastes a step at
rate 0 during warm-up.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

INTERVALS = ("step", "epoch")


def cosine_with_warmup(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    """lambda(step) of `get_cosine_schedule_with_warmup` (num_cycles 0.5); see the module docstring."""
    if step < num_warmup_steps:
        return step / max(1, num_warmup_steps)
    progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _shifted_cosine_with_warmup(index: int, num_warmup_steps: int, num_training_steps: int) -> float:
    # index = number of scheduler.step() calls so far; the i-th step/epoch trains with lambda(i + 1).
    return cosine_with_warmup(index + 1, num_warmup_steps, num_training_steps)


def warmup_cosine_scheduler(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int) -> LambdaLR:
    """A LambdaLR whose i-th (0-based) step or epoch trains at base_lr * lambda(i + 1).

    Args:
        optimizer: the optimizer whose learning rates are scaled.
        num_warmup_steps: W >= 0, in units of the interval the scheduler is stepped at.
        num_training_steps: S >= 1, the total number of intervals; the last one trains at rate 0.
    """
    if num_warmup_steps < 0:
        raise ValueError(f"num_warmup_steps={num_warmup_steps}; expected an integer >= 0")
    if num_training_steps < 1:
        raise ValueError(f"num_training_steps={num_training_steps}; expected an integer >= 1")
    if num_warmup_steps > num_training_steps:
        raise ValueError(
            f"num_warmup_steps={num_warmup_steps} exceeds num_training_steps={num_training_steps}; "
            "expected warm-up to fit inside training"
        )
    lr_lambda = partial(
        _shifted_cosine_with_warmup, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps
    )
    return LambdaLR(optimizer, lr_lambda)
