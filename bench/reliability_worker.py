"""One process of the fault-injection benchmark (bench/reliability_faults.py starts it and kills it with -9).

    python bench/reliability_worker.py train  RUN_DIR [--kill-in-checkpoint N]
    python bench/reliability_worker.py design RUN_DIR MODEL_DIR NUM_STEPS

train: fits the tiny two-task RBD tree of tests/training for EPOCHS epochs, checkpointing every epoch into
RUN_DIR/checkpoints and resuming from RUN_DIR/checkpoints/last.ckpt when it exists; writes RUN_DIR/final.safetensors
at the end. With --kill-in-checkpoint N the process SIGKILLs itself halfway through writing its N-th checkpoint
file (inside Lightning's own save path), which is what a kill during checkpoint writing looks like on disk.
design: LaMBO-2 on the saved tiny design model, saving the DesignState after every step into RUN_DIR/state and
resuming from it when it exists; writes RUN_DIR/final/ at the end.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "training"))
EPOCHS = 3


def kill_halfway_through_checkpoint(number: int) -> None:
    """SIGKILLs this process after half the bytes of the `number`-th checkpoint write (fsspec's local file)."""
    from fsspec.implementations.local import LocalFileOpener

    original = LocalFileOpener.write
    writes = {"count": 0}

    def write(self, data):
        if str(self.path).endswith(".ckpt"):
            writes["count"] += 1
            if writes["count"] == number:
                original(self, data[: len(data) // 2])
                self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return original(self, data)

    LocalFileOpener.write = write


def train(run_dir: Path, kill_in_checkpoint: int | None) -> None:
    import lightning.pytorch as pl
    from helpers import tiny_setup
    from safetensors.torch import save_file

    from cortex.training import EMA, NeuralTreeSystem

    if kill_in_checkpoint is not None:
        kill_halfway_through_checkpoint(kill_in_checkpoint)
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    torch.manual_seed(0)
    model, tasks, corruption, datamodule = tiny_setup(dropout=0.1)
    system = NeuralTreeSystem(model, tasks, corruption, optim={"lr": 1e-2, "warmup_steps": 2}, seed=3)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        logger=False,
        callbacks=[
            EMA(decay=0.8),
            pl.callbacks.ModelCheckpoint(
                dirpath=checkpoints, save_last=True, save_top_k=-1, every_n_epochs=1
            ),
        ],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        default_root_dir=run_dir,
    )
    trainer.fit(system, datamodule=datamodule, ckpt_path=str(last) if last.is_file() else None)
    state = {k: v.detach().contiguous() for k, v in system.model.state_dict().items()}
    save_file(state, str(run_dir / "final.safetensors.tmp"))
    os.replace(run_dir / "final.safetensors.tmp", run_dir / "final.safetensors")


def design(run_dir: Path, model_dir: Path, num_steps: int) -> None:
    import pandas as pd

    from cortex.design.lambo import LaMBO2, LaMBO2Config
    from cortex.design.state import DesignState
    from cortex.design.tree_objectives import LeafMean
    from cortex.model import NeuralTreeModel

    torch.set_num_threads(1)
    model = NeuralTreeModel.from_pretrained(model_dir).eval()
    config = LaMBO2Config(num_mutations_per_step=3, max_guidance_updates=1, kl_weight=0.25, seed=3)
    sampler = LaMBO2(model, LeafMean("bind"), None, config)
    state_dir = run_dir / "state"
    if (state_dir / "state.safetensors").is_file():
        state = sampler.resume(DesignState.load(state_dir))
    else:
        seeds = pd.read_csv(model_dir / "seeds.csv")["sequence"].tolist()
        state = sampler.init_state(seeds)
    while state.step < num_steps:
        state = sampler.step(state).state
        state.save(state_dir)
    state.save(run_dir / "final")


if __name__ == "__main__":
    mode, run_dir = sys.argv[1], Path(sys.argv[2])
    if mode == "train":
        kill = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--kill-in-checkpoint" else None
        train(run_dir, kill)
    elif mode == "design":
        design(run_dir, Path(sys.argv[3]), int(sys.argv[4]))
    else:
        raise ValueError(f"mode {mode!r}; expected 'train' or 'design'")
