"""Record golden values of the reference Ehrlich functions (pytorch-holo) for cortex's parity tests.

pytorch-holo pins numpy < 2, which cortex cannot share, so this script runs in its own virtual environment
outside the repository. Working combination (recorded November 2026, Python 3.11.7):

    python3 -m venv /tmp/holo-venv
    /tmp/holo-venv/bin/pip install pytorch-holo==0.0.5 "numpy<2" torch==2.13.0 safetensors
    # resolved: pytorch-holo 0.0.5, torch 2.13.0+cpu, numpy 1.26.4, botorch 0.18.1, safetensors 0.8.0
    /tmp/holo-venv/bin/python scripts/ehrlich_golden.py

It writes tests/benchmarks/golden/ehrlich.safetensors (tensors, keys `<case>/<name>`) and
tests/benchmarks/golden/ehrlich.json (the cases, their construction arguments and the environment).
Per case (an instance `ehr_v-{v}_l-{L}_m-{k}_c-{c}_q-{q}` built with construction seed `s`):

- `transition_matrix` (v, v) float32, `stationary_dist` (v,) float32, `motifs` (c, k), `spacings` (c, k-1)
- `initial_solution` (N, L): `Ehrlich.initial_solution(N)`, and `initial_values` (N,) its objective values
- `random_x` (N, L) uniform sequences, `mutant_x` (N, L) initial solutions with a few uniform point
  mutations (a mix of feasible and infeasible sequences with nonzero values), `spliced_x` (N, L) a random-length
  prefix of the optimal solution joined to an initial solution (high values), their `*_values` (N,), and
  `*_epistatic_values` (N,) from the same instance built with epistasis_factor=0.5
- `optimal_solution` (L,) and `optimal_value` ()

Sequences are stored as uint8 (v <= 256). Values are float32 with -inf for infeasible sequences.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from holo.test_functions.closed_form import Ehrlich
from safetensors.torch import save_file

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "benchmarks" / "golden"

# (num_states, dim, motif_length, num_motifs, quantization): easy, medium and hard targets of issue 7,
# plus two extra shapes that exercise q < k and a smaller vocabulary.
INSTANCES = [
    (32, 32, 4, 4, 4),
    (32, 128, 4, 4, 4),
    (32, 128, 8, 8, 8),
    (32, 32, 4, 4, 2),
    (20, 64, 4, 2, 4),
]
CONSTRUCTION_SEEDS = [0, 7, 50494]
NUM_SEQUENCES = 128
NUM_MUTATIONS = 2
EPISTASIS_FACTOR = 0.5


def case_name(v: int, length: int, k: int, c: int, q: int, seed: int) -> str:
    return f"ehr_v-{v}_l-{length}_m-{k}_c-{c}_q-{q}_s-{seed}"


def record_case(v: int, length: int, k: int, c: int, q: int, seed: int) -> dict[str, torch.Tensor]:
    fn = Ehrlich(num_states=v, dim=length, num_motifs=c, motif_length=k, quantization=q, random_seed=seed)
    data_rng = torch.Generator().manual_seed(1000 + seed)
    initial = fn.initial_solution(NUM_SEQUENCES)
    random_x = torch.randint(v, (NUM_SEQUENCES, length), generator=data_rng)

    mutant_x = initial.clone()
    rows = torch.arange(NUM_SEQUENCES).unsqueeze(-1)
    positions = torch.randint(length, (NUM_SEQUENCES, NUM_MUTATIONS), generator=data_rng)
    mutant_x[rows, positions] = torch.randint(v, (NUM_SEQUENCES, NUM_MUTATIONS), generator=data_rng)

    optimum = fn.optimal_solution()
    # A prefix of the optimum joined to an initial solution: one junction, so many stay feasible.
    cut = torch.randint(length + 1, (NUM_SEQUENCES, 1), generator=data_rng)
    spliced_x = torch.where(torch.arange(length) < cut, optimum.expand(NUM_SEQUENCES, -1), initial)
    epistatic = Ehrlich(
        num_states=v,
        dim=length,
        num_motifs=c,
        motif_length=k,
        quantization=q,
        epistasis_factor=EPISTASIS_FACTOR,
        random_seed=seed,
    )

    tensors = {
        "transition_matrix": fn.transition_matrix.float(),
        "stationary_dist": fn.stationary_dist.squeeze(-1).float(),
        "motifs": torch.stack(list(fn.motifs)).to(torch.int64),
        "spacings": torch.stack(list(fn.spacings)).to(torch.int64),
        "optimal_solution": optimum.to(torch.uint8),
        "optimal_value": fn(optimum.unsqueeze(0)).squeeze(0).float(),
    }
    for name, x in [("initial", initial), ("random", random_x), ("mutant", mutant_x), ("spliced", spliced_x)]:
        key = "initial_solution" if name == "initial" else f"{name}_x"
        tensors[key] = x.to(torch.uint8)
        tensors[f"{name}_values"] = fn(x).float()
        tensors[f"{name}_epistatic_values"] = epistatic(x).float()
    return tensors


def main() -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    cases = []
    for v, length, k, c, q in INSTANCES:
        for seed in CONSTRUCTION_SEEDS:
            name = case_name(v, length, k, c, q, seed)
            for key, value in record_case(v, length, k, c, q, seed).items():
                tensors[f"{name}/{key}"] = value.contiguous()
            cases.append(
                {
                    "name": name,
                    "num_states": v,
                    "dim": length,
                    "motif_length": k,
                    "num_motifs": c,
                    "quantization": q,
                    "random_seed": seed,
                    "num_sequences": NUM_SEQUENCES,
                }
            )
    save_file(tensors, str(OUT_DIR / "ehrlich.safetensors"))
    meta = {
        "generator": "scripts/ehrlich_golden.py",
        "reference": "holo.test_functions.closed_form.Ehrlich (noise_std=0, negate=False)",
        "epistasis_factor_of_epistatic_values": EPISTASIS_FACTOR,
        "environment": {
            "python": sys.version.split()[0],
            **{pkg: version(pkg) for pkg in ["pytorch-holo", "torch", "numpy", "botorch", "safetensors"]},
        },
        "cases": cases,
    }
    (OUT_DIR / "ehrlich.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
