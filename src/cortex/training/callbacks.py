"""Lightning callbacks of a cortex run: exponential moving average of the weights, and the
`save_pretrained` export of the trained tree.

Both act on `pl_module.model`, the `NeuralTreeModel` a `NeuralTreeSystem` holds (the system never
inherits from the model, so the model's own state dict is the artifact).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

logger = logging.getLogger(__name__)


class EMA(Callback):
    """Exponential moving average of the model's state (spec section 6.6, fixing appendix A9: the
    original's averaging was never called under Lightning 2).

    After every optimizer step t >= `start_step` (and every `update_every_n_steps`-th one), for each entry of
    `pl_module.model.state_dict()`: floating tensors  ema <- decay * ema + (1 - decay) * value; other
    tensors (integer/bool buffers) are copied. The first update initialises ema with the current values.

    The averaged weights are swapped in for validation (raw weights restored afterwards, so optimisation
    continues on the raw weights), copied into the model when training ends (so whatever is saved after
    `fit` is the average), and returned by `averaged_state_dict()` for export. The callback's
    `state_dict()` holds the averages, so a Lightning checkpoint resumes them exactly.

    Args:
        decay: in [0, 1); 0.999 averages over roughly the last 1000 steps.
        start_step: number of optimizer steps taken before the first update.
        update_every_n_steps: update after every n-th optimizer step (n >= 1).
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0, update_every_n_steps: int = 1) -> None:
        if not (0.0 <= decay < 1.0) or math.isnan(decay):
            raise ValueError(f"EMA decay={decay}; expected a float in [0, 1)")
        if start_step < 0:
            raise ValueError(f"EMA start_step={start_step}; expected an integer >= 0")
        if update_every_n_steps < 1:
            raise ValueError(f"EMA update_every_n_steps={update_every_n_steps}; expected an integer >= 1")
        self.decay = decay
        self.start_step = start_step
        self.update_every_n_steps = update_every_n_steps
        self.num_updates = 0
        self.last_update_step = 0
        self.averages: dict[str, torch.Tensor] | None = None
        self._raw: dict[str, torch.Tensor] | None = None

    @property
    def is_initialized(self) -> bool:
        return self.averages is not None

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One averaging update from `model`'s current state."""
        state = model.state_dict()
        if self.averages is None:
            self.averages = {name: value.detach().clone() for name, value in state.items()}
        else:
            floats_avg, floats_new = [], []
            for name, value in state.items():
                average = self.averages[name]
                if average.device != value.device:
                    average = self.averages[name] = average.to(value.device)
                if value.is_floating_point():
                    floats_avg.append(average)
                    floats_new.append(value.detach())
                else:
                    average.copy_(value)
            if floats_avg:
                # lerp(avg, new, 1 - decay) = decay * avg + (1 - decay) * new
                torch._foreach_lerp_(floats_avg, floats_new, 1.0 - self.decay)
        self.num_updates += 1

    def averaged_state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """`model.state_dict()` with averaged values (the raw values when no update has happened yet)."""
        state = model.state_dict()
        if self.averages is None:
            return state
        return {name: self.averages[name].to(value.device) for name, value in state.items()}

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # global_step counts optimizer steps: it does not move on accumulation micro-batches.
        step = trainer.global_step
        if step <= self.last_update_step or step <= self.start_step:
            return
        if (step - self.start_step) % self.update_every_n_steps != 0:
            return
        self.update(pl_module.model)
        self.last_update_step = step

    @torch.no_grad()
    def _swap_in(self, model: torch.nn.Module) -> None:
        if self.averages is None or self._raw is not None:
            return
        self._raw = {name: value.detach().clone() for name, value in model.state_dict().items()}
        model.load_state_dict(self.averaged_state_dict(model))

    @torch.no_grad()
    def _swap_out(self, model: torch.nn.Module) -> None:
        if self._raw is None:
            return
        model.load_state_dict(self._raw)
        self._raw = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in(pl_module.model)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out(pl_module.model)

    @torch.no_grad()
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out(pl_module.model)
        if self.averages is not None:
            pl_module.model.load_state_dict(self.averaged_state_dict(pl_module.model))

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "last_update_step": self.last_update_step,
            "averages": self.averages,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["decay"] != self.decay:
            logger.warning(
                "EMA decay changes on resume: checkpoint %s, config %s", state_dict["decay"], self.decay
            )
        self.num_updates = state_dict["num_updates"]
        self.last_update_step = state_dict["last_update_step"]
        self.averages = state_dict["averages"]


class SavePretrained(Callback):
    """Writes `model.save_pretrained(...)` output: at the end of training into `dirpath`, and, when
    `monitor` is set, at every new best validation value of `monitor` into `best_dirpath`.

    When an `EMA` callback is present the averaged weights are what gets written. Only global rank 0 writes.

    Args:
        dirpath: directory for the final model (config.json, model.safetensors, tokenizer/).
        monitor: a logged validation metric (e.g. "gfp/val_spearman"); None saves only at the end.
        mode: "max" or "min": which direction of `monitor` is better.
        best_dirpath: directory for the best model (default `<dirpath>/best`).
    """

    def __init__(
        self,
        dirpath: str | Path,
        monitor: str | None = None,
        mode: str = "max",
        best_dirpath: str | Path | None = None,
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"SavePretrained mode={mode!r}; expected 'max' or 'min'")
        self.dirpath = Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.best_dirpath = Path(best_dirpath) if best_dirpath is not None else self.dirpath / "best"
        self.best_score: float | None = None
        self._ema: EMA | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        emas = [callback for callback in trainer.callbacks if isinstance(callback, EMA)]
        if len(emas) > 1:
            raise ValueError(f"found {len(emas)} EMA callbacks in trainer.callbacks; expected at most one")
        self._ema = emas[0] if emas else None

    def _state_dict(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self._ema is None:
            return model.state_dict()
        return self._ema.averaged_state_dict(model)

    def save(self, trainer: pl.Trainer, model: Any, directory: Path) -> None:
        if not trainer.is_global_zero:
            return
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: value.detach().cpu().contiguous() for name, value in self._state_dict(model).items()}
        model.save_pretrained(directory, state_dict=state)
        logger.info("saved the trained model to %s", directory)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.monitor is None or trainer.sanity_checking:
            return
        if self.monitor not in trainer.callback_metrics:
            raise ValueError(
                f"SavePretrained monitor={self.monitor!r} was not logged; logged metrics: "
                f"{sorted(trainer.callback_metrics)}"
            )
        score = float(trainer.callback_metrics[self.monitor])
        if math.isnan(score):
            return
        better = self.best_score is None or (
            score > self.best_score if self.mode == "max" else score < self.best_score
        )
        if better:
            self.best_score = score
            self.save(trainer, pl_module.model, self.best_dirpath)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer, pl_module.model, self.dirpath)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict["best_score"]
