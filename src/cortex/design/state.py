"""The design state: population, history and RNG state of a LaMBO-2 run, saved and resumed exactly.

A `DesignState` is everything `LaMBO2.step` needs besides the model, objective, constraints and config, so
`step(state)` is a pure function of the state: a resumed run repeats an uninterrupted one bit for bit.
Tensors are saved with safetensors (the generator state is a uint8 tensor), the rest as JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSOR_FIELDS: tuple[str, ...] = (
    "input_ids",
    "attention_mask",
    "seed_ids",
    "objective",
    "edit_positions",
    "num_accepted",
    "generator_state",
)


@dataclass
class DesignState:
    """Population of N candidates, padded to L tokens.

    input_ids, attention_mask, seed_ids (N, L); objective (N,) raw objective of the candidates; edit_positions
    (N, L) bool, the positions chosen at the last selection (reused unless resampling); num_accepted (N,) long,
    accepted proposals so far; step: completed steps; generator_state: uint8 state of the sampler's
    torch.Generator at the start of the next step; history: one dict per (step, member), see `LaMBO2`.
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

    @property
    def num_candidates(self) -> int:
        return self.input_ids.shape[0]

    def save(self, directory: str | os.PathLike) -> None:
        """Writes state.safetensors and state.json into `directory` (created if missing)."""
        os.makedirs(directory, exist_ok=True)
        tensors = {name: getattr(self, name).detach().cpu().contiguous() for name in TENSOR_FIELDS}
        save_file(tensors, os.path.join(directory, "state.safetensors"))
        with open(os.path.join(directory, "state.json"), "w") as handle:
            json.dump({"step": self.step, "history": self.history}, handle)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: torch.device | str = "cpu") -> DesignState:
        """Reads a state written by `save`; tensors go to `device` (the generator state stays on the CPU)."""
        tensor_path = os.path.join(directory, "state.safetensors")
        json_path = os.path.join(directory, "state.json")
        for path in (tensor_path, json_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} not found; expected a directory written by DesignState.save")
        tensors = load_file(tensor_path)
        missing = sorted(set(TENSOR_FIELDS) - set(tensors))
        if missing:
            raise ValueError(f"{tensor_path} lacks tensors {missing}; expected {list(TENSOR_FIELDS)}")
        with open(json_path) as handle:
            meta = json.load(handle)
        moved = {
            k: v if k == "generator_state" else v.to(device) for k, v in tensors.items() if k in TENSOR_FIELDS
        }
        return cls(**moved, step=int(meta["step"]), history=list(meta["history"]))

    def history_frame(self):
        """History as a pandas DataFrame (one row per step and member)."""
        import pandas as pd

        return pd.DataFrame(self.history)

    def history_dataset(self):
        """History as a HuggingFace `datasets.Dataset`."""
        from datasets import Dataset

        return Dataset.from_pandas(self.history_frame(), preserve_index=False)


__all__ = ["TENSOR_FIELDS", "DesignState"]
