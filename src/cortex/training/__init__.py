"""cortex.training: the LightningModule that holds model + tasks + corruption, its callbacks and schedules."""

from cortex.training.callbacks import EMA, SavePretrained
from cortex.training.schedules import cosine_with_warmup, warmup_cosine_scheduler
from cortex.training.system import NeuralTreeSystem, OptimizerConfig

__all__ = [
    "EMA",
    "NeuralTreeSystem",
    "OptimizerConfig",
    "SavePretrained",
    "cosine_with_warmup",
    "warmup_cosine_scheduler",
]
