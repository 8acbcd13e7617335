"""GB1 oracle: fitness lookup in the four-site combinatorial landscape of Wu et al. 2016 (eLife).

Data: data/gb1_wu2016_flip.csv.gz (FLIP copy of the eLife supplement; see data/PROVENANCE.md). 149,361 of the
20^4 = 160,000 variants at sites V39, D40, G41, V54 (1-based) of the 56-residue GB1 domain were measured;
fitness is relative to wild type (= 1.0). An unmeasured variant, and any sequence that differs from wild
type outside the four sites, has no value: the oracle returns NaN for it, never a made-up number.

Candidates are full 56-residue sequences: strings of the 20 canonical amino acids, or a (B, 56) tensor of
`ProteinTokenizer` ids (cortex.data.tokenization.PROTEIN_VOCAB).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from cortex.benchmarks.blackbox import BlackBox, Candidates, check_string_batch, check_token_batch
from cortex.data.tokenization import CANONICAL_AMINO_ACIDS, PROTEIN_VOCAB

GB1_WILD_TYPE = "MQYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE"
GB1_SITES: tuple[int, ...] = (38, 39, 40, 53)  # 0-based; V39, D40, G41, V54 in 1-based numbering
GB1_DATA_PATH = Path(__file__).resolve().parents[3] / "data" / "gb1_wu2016_flip.csv.gz"
_NUM_AMINO_ACIDS = len(CANONICAL_AMINO_ACIDS)


class GB1Oracle(BlackBox):
    """Measured GB1 fitness of full sequences; (B,) float32, NaN where unmeasured.

    Args:
        path: the GB1 CSV (columns `Variants`, 4 letters, and `Fitness`); defaults to the repository's copy.
        batch_size, num_workers, budget, start_method: see `BlackBox`.

    Attributes: `wild_type` (str), `sites` (0-based positions), `is_mutable` (56,) bool (True at the four
    sites), `wild_type_fitness`, `num_measured`, `table` (20^4,) float32 indexed by the variant's residues
    in `CANONICAL_AMINO_ACIDS` order (NaN = unmeasured), `measured_fitness` (num_measured,) float64.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        batch_size: int = 65536,
        num_workers: int = 0,
        budget: int | None = None,
        start_method: str = "spawn",
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, budget=budget, start_method=start_method
        )
        path = Path(GB1_DATA_PATH if path is None else path)
        if not path.is_file():
            raise FileNotFoundError(
                f"GB1 data not found at {path!s}; pass path= to the gb1_wu2016_flip.csv.gz file of the cortex "
                f"repository (data/)"
            )
        frame = pd.read_csv(path, usecols=["Variants", "Fitness"])
        variants = frame["Variants"].tolist()
        self.wild_type = GB1_WILD_TYPE
        self.sites = GB1_SITES
        self.table = torch.full((_NUM_AMINO_ACIDS ** len(GB1_SITES),), float("nan"))
        # float64 copy for landscape statistics; lookups return float32.
        self.measured_fitness = torch.tensor(frame["Fitness"].to_numpy(), dtype=torch.float64)
        if self.measured_fitness.isnan().any():
            raise ValueError(
                f"{path!s} has rows with a missing Fitness; expected a value for every listed variant"
            )
        self.table[self._variant_index(variants, where=f"{path.name} Variants")] = (
            self.measured_fitness.float()
        )
        self.num_measured = len(variants)
        self.is_mutable = torch.zeros(len(GB1_WILD_TYPE), dtype=torch.bool)
        self.is_mutable[list(GB1_SITES)] = True
        self.wild_type_variant = "".join(GB1_WILD_TYPE[site] for site in GB1_SITES)
        self.wild_type_fitness = float(self.lookup([self.wild_type_variant])[0])
        if self.wild_type_fitness != self.wild_type_fitness:  # NaN
            raise ValueError(f"{path!s} has no row for the wild-type variant {self.wild_type_variant!r}")
        # (V,) ProteinTokenizer id -> amino-acid index in CANONICAL_AMINO_ACIDS order, -1 elsewhere.
        self._id_to_amino_acid = torch.full((len(PROTEIN_VOCAB),), -1, dtype=torch.int64)
        for index, residue in enumerate(CANONICAL_AMINO_ACIDS):
            self._id_to_amino_acid[PROTEIN_VOCAB.index(residue)] = index
        self._wild_type_ids = torch.tensor([PROTEIN_VOCAB.index(residue) for residue in GB1_WILD_TYPE])
        self._site_weights = _NUM_AMINO_ACIDS ** torch.arange(
            len(GB1_SITES) - 1, -1, -1
        )  # (4,) base-20 digits

    # ---- black-box interface -------------------------------------------------------------------------------

    def prepare(self, candidates: Candidates) -> torch.Tensor:
        """Checks a batch and returns (B, 56) ProteinTokenizer ids of canonical amino acids."""
        length = len(self.wild_type)
        if isinstance(candidates, torch.Tensor):
            ids = check_token_batch(candidates, length, where="GB1Oracle")
            in_vocab = (ids >= 0) & (ids < len(PROTEIN_VOCAB))
            canonical = in_vocab & (self._id_to_amino_acid[ids.clamp(0, len(PROTEIN_VOCAB) - 1)] >= 0)
            if not canonical.all():
                row, position = (int(i) for i in (~canonical).nonzero()[0])
                raise ValueError(
                    f"GB1Oracle candidates[{row}, {position}] = {int(ids[row, position])} is not the id of a "
                    f"canonical amino acid; expected ProteinTokenizer ids of {CANONICAL_AMINO_ACIDS}"
                )
            return ids
        sequences = check_string_batch(candidates, where="GB1Oracle candidates")
        for index, sequence in enumerate(sequences):
            if len(sequence) != length:
                raise ValueError(
                    f"GB1Oracle candidates[{index}] has length {len(sequence)}; expected the {length}-residue "
                    f"GB1 domain"
                )
            for position, residue in enumerate(sequence):
                if residue not in CANONICAL_AMINO_ACIDS:
                    raise ValueError(
                        f"GB1Oracle candidates[{index}] has {residue!r} at position {position}; expected one of "
                        f"the 20 canonical amino acids {CANONICAL_AMINO_ACIDS}"
                    )
        return self.encode(sequences)

    def evaluate(self, prepared: torch.Tensor) -> torch.Tensor:
        """(B,) fitness of (B, 56) ids; NaN if unmeasured or changed outside the four sites."""
        fixed = ~self.is_mutable
        unchanged_elsewhere = (prepared[:, fixed] == self._wild_type_ids[fixed]).all(dim=-1)
        site_residues = self._id_to_amino_acid[prepared[:, list(self.sites)]]  # (B, 4)
        values = self.table[(site_residues * self._site_weights).sum(-1)]
        return torch.where(unchanged_elsewhere, values, torch.full_like(values, float("nan")))

    # ---- helpers -------------------------------------------------------------------------------------------

    def encode(self, sequences: Sequence[str]) -> torch.Tensor:
        """(B, 56) ProteinTokenizer ids of B sequences (characters assumed checked)."""
        return torch.tensor([[PROTEIN_VOCAB.index(r) for r in s] for s in sequences], dtype=torch.int64)

    def decode(self, input_ids: torch.Tensor) -> list[str]:
        return ["".join(PROTEIN_VOCAB[i] for i in row) for row in input_ids.tolist()]

    def variant_to_sequence(self, variant: str) -> str:
        """The 56-residue sequence with the 4 letters of `variant` at the four sites (wild type elsewhere)."""
        self._variant_index([variant], where="variant")
        residues = list(self.wild_type)
        for site, residue in zip(self.sites, variant, strict=True):
            residues[site] = residue
        return "".join(residues)

    def sequence_to_variant(self, sequence: str) -> str:
        """The 4 letters at the four sites of a 56-residue sequence."""
        return "".join(sequence[site] for site in self.sites)

    def lookup(self, variants: Sequence[str]) -> torch.Tensor:
        """(B,) fitness of 4-letter variants (e.g. "VDGV" = wild type); NaN where unmeasured."""
        variants = check_string_batch(variants, where="GB1Oracle.lookup variants")
        return self.table[self._variant_index(variants, where="variants")]

    def top_fraction_threshold(self, fraction: float = 0.01) -> float:
        """Fitness at the top `fraction` of the measured landscape (0.01: the 99th percentile)."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1); got {fraction!r}")
        return float(torch.quantile(self.measured_fitness, 1.0 - fraction))

    def sample_seeds(self, num_seeds: int = 64, seed: int = 0) -> list[str]:
        """`num_seeds` distinct measured sequences with fitness below wild type, drawn uniformly by `seed`."""
        below = (self.table < self.wild_type_fitness).nonzero().squeeze(-1)  # NaN compares False
        if not 0 < num_seeds <= below.numel():
            raise ValueError(f"num_seeds must be in [1, {below.numel()}]; got {num_seeds!r}")
        generator = torch.Generator().manual_seed(seed)
        chosen = below[torch.randperm(below.numel(), generator=generator)[:num_seeds]]
        digits = (chosen.unsqueeze(-1) // self._site_weights) % _NUM_AMINO_ACIDS  # (n, 4)
        variants = ["".join(CANONICAL_AMINO_ACIDS[d] for d in row) for row in digits.tolist()]
        return [self.variant_to_sequence(variant) for variant in variants]

    def _variant_index(self, variants: Sequence[str], *, where: str) -> torch.Tensor:
        """(B,) int64 index into `table` of 4-letter variants; ValueError names a malformed one."""
        indices = []
        for row, variant in enumerate(variants):
            if len(variant) != len(GB1_SITES) or any(r not in CANONICAL_AMINO_ACIDS for r in variant):
                raise ValueError(
                    f"{where}[{row}] = {variant!r}; expected {len(GB1_SITES)} canonical amino acids "
                    f"(one per site {[s + 1 for s in GB1_SITES]})"
                )
            index = 0
            for residue in variant:
                index = index * _NUM_AMINO_ACIDS + CANONICAL_AMINO_ACIDS.index(residue)
            indices.append(index)
        return torch.tensor(indices, dtype=torch.int64)
