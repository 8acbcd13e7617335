"""The design state: population, history and RNG state of a LaMBO-2 run, saved and resumed exactly.

A `DesignState` is everything `LaMBO2.step` needs besides the model, objective, constraints and config, so
`step(state)` is a pure function of the state: a resumed run repeats an uninterrupted one bit for bit.
Tensors are saved with safetensors (the generator state is a uint8 tensor), the rest as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

TENSOR_FIELDS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "seed_ids",
    "objective",
    "edit_positions",
    "num_accepted",
    "generator_state",
)
# Saved when present: pll (N,) pseudo-log-likelihood of the candidates and pll_terms (N, L) its per-position
# terms (caches; None = recompute).
OPTIONAL_TENSOR_FIELDS: tuple[str, ...] = ("pll", "pll_terms")


@dataclass
class DesignState:
    """Population of N candidates, padded to L tokens.

    input_ids, attention_mask, seed_ids (N, L); objective (N,) raw objective of the candidates; edit_positions
    (N, L) bool, the positions chosen at the last selection (reused unless resampling); num_accepted (N,) long,
    accepted proposals so far; step: completed steps; generator_state: uint8 state of the sampler's
    torch.Generator at the start of the next step; history: one dict per (step, member), see `LaMBO2`;
    pll: (N,) pseudo-log-likelihood of the candidates over their corruptible positions, kept so that a step
    never rescores its starting population (None: the sampler computes it); pll_terms: (N, L) float its
    per-position terms log p(x_j | x with x_j masked) (0 at excluded positions), from which a proposal's PLL is
    updated near its edits only (None: the sampler computes them).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    seed_ids: torch.Tensor
    objective: torch.Tensor
    edit_positions: torch.Tensor
    num_accepted: torch.Tensor
    generator_state: torch.Tensor
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    pll: torch.Tensor | None = None
    pll_terms: torch.Tensor | None = None

    @property
    def num_candidates(self) -> int:
        return self.input_ids.shape[0]

    def save(self, directory: str | os.PathLike) -> None:
        """Writes state.safetensors (tensors, plus step and history in its metadata) and a readable copy,
        state.json, into `directory` (created if missing).

        Each file is written to a temporary name, flushed to disk and renamed over the old one (os.replace is
        atomic), so a process killed at any moment leaves the previous state or the new one, never a mix:
        state.safetensors alone is the commit point, and it carries a checksum of its tensors.
        """
        os.makedirs(directory, exist_ok=True)
        names = TENSOR_FIELDS + tuple(n for n in OPTIONAL_TENSOR_FIELDS if getattr(self, n) is not None)
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in names}
        metadata = {
            "step": str(self.step),
            "history": json.dumps(self.history),
            "sha256": _checksum(tensors),
        }
        tensor_path = os.path.join(directory, "state.safetensors")
        _atomic_write(tensor_path, save(tensors, metadata=metadata))
        meta = json.dumps({"step": self.step, "history": self.history}).encode()
        _atomic_write(os.path.join(directory, "state.json"), meta)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str = "cpu") -> DesignState:
        """Reads a state written by `save`; tensors go to `device` (the generator state stays on the CPU).

        Raises ValueError when the file is damaged (checksum mismatch) or lacks tensors; safetensors raises on
        a truncated or garbled file. Never returns a partial state.
        """
        tensor_path = os.path.join(directory, "state.safetensors")
        json_path = os.path.join(directory, "state.json")
        if not os.path.isfile(tensor_path):
            raise FileNotFoundError(
                f"{tensor_path} not found; expected a directory written by DesignState.save"
            )
        with safe_open(tensor_path, framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = load_file(tensor_path)
        missing = sorted(set(TENSOR_FIELDS) - set(tensors))
        if missing:
            raise ValueError(f"{tensor_path} lacks tensors {missing}; expected {list(TENSOR_FIELDS)}")
        if "sha256" in metadata:
            if _checksum(tensors) != metadata["sha256"]:
                raise ValueError(
                    f"{tensor_path} is damaged: its tensors do not match the checksum written with them"
                )
            meta = {"step": int(metadata["step"]), "history": json.loads(metadata["history"])}
        else:  # written before the metadata copy existed: step and history live in state.json only
            if not os.path.isfile(json_path):
                raise FileNotFoundError(
                    f"{json_path} not found; expected a directory written by DesignState.save"
                )
            with open(json_path) as handle:
                meta = json.load(handle)
        known = TENSOR_FIELDS + OPTIONAL_TENSOR_FIELDS
        moved = {k: v if k == "generator_state" else v.to(device) for k, v in tensors.items() if k in known}
        return cls(**moved, step=int(meta["step"]), history=list(meta["history"]))

    def history_frame(self):
        """History as a pandas DataFrame (one row per step and member)."""
        import pandas as pd

        return pd.DataFrame(self.history)

    def history_dataset(self):
        """History as a HuggingFace `datasets.Dataset`."""
        from datasets import Dataset

        return Dataset.from_pandas(self.history_frame(), preserve_index=False)


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the fields' names, dtypes, shapes and bytes, in TENSOR_FIELDS order, then the optional
    fields present (a state without them hashes as before they existed)."""
    digest = hashlib.sha256()
    for name in TENSOR_FIELDS + tuple(n for n in OPTIONAL_TENSOR_FIELDS if n in tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _atomic_write(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same directory, fsync and os.replace."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


__all__ = ["OPTIONAL_TENSOR_FIELDS", "TENSOR_FIELDS", "DesignState"]
