"""cortex.corruption: noise schedules and corruption processes shared by training and design."""

from cortex.corruption.blosum import blosum62_scores, blosum62_transition_matrix, vocab_transition_matrix
from cortex.corruption.processes import (
    CORRUPTION_PROCESSES,
    CorruptionProcess,
    GaussianCorruption,
    MaskCorruption,
    SubstitutionCorruption,
    build_corruption,
)
from cortex.corruption.schedules import BETA_SCHEDULES, NoiseSchedule, TimestepSampler, beta_schedule

__all__ = [
    "BETA_SCHEDULES",
    "CORRUPTION_PROCESSES",
    "CorruptionProcess",
    "GaussianCorruption",
    "MaskCorruption",
    "NoiseSchedule",
    "SubstitutionCorruption",
    "TimestepSampler",
    "beta_schedule",
    "blosum62_scores",
    "blosum62_transition_matrix",
    "build_corruption",
    "vocab_transition_matrix",
]
