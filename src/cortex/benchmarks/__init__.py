"""cortex.benchmarks: design test functions, oracles and model-free baselines.

- `blackbox`: the `BlackBox` interface (batch in, values out; budget; worker processes), `FunctionBlackBox`.
- `ehrlich`: Ehrlich functions (Stanton et al. 2024), matching pytorch-holo 0.0.5 for the same seed.
- `gb1`: `GB1Oracle`, the four-site GB1 landscape of Wu et al. 2016 (NaN for unmeasured variants).
- `baselines`: `GeneticAlgorithm` and `RandomMutation` over token tensors.

Import from the modules; this package does not re-export them, so that worker processes that unpickle an
Ehrlich function import torch only (gb1 pulls in pandas and the tokenizer).
"""
