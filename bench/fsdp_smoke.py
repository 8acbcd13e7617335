"""FSDP smoke run: a few Lightning training steps of a tree whose root is sharded across GPUs (FSDP).

    torchrun --nproc_per_node 2 bench/fsdp_smoke.py            # or: python bench/fsdp_smoke.py (spawns 2 GPUs)
    python bench/fsdp_smoke.py --devices 2 --steps 20 --width 1024 --layers 8

No Hydra or datasets imports: the batches are real RBD sequences read with pandas. Each transformer block of
the root (cortex.model.layers.TransformerBlock) is an FSDP unit; the run prints the loss per step and the peak
GPU memory per rank, and exits non-zero if the loss is not finite or did not fall.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader

from cortex.data.collate import RootEncoder, TreeCollator
from cortex.data.tokenization import ProteinTokenizer
from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.model.layers import TransformerBlock
from cortex.tasks import RegressionTask
from cortex.training import NeuralTreeSystem

DATA = Path(__file__).resolve().parents[1] / "data" / "rbd_starr2020_bind_expr.csv.gz"


class LossHistory(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    frame = pd.read_csv(DATA)
    frame = frame[~frame["sequence"].str.contains(r"\*") & frame["expr_delta_meanF"].notna()].reset_index(
        drop=True
    )
    config = NeuralTreeConfig(
        roots={"protein": {"type": "transformer", "max_length": 256, "embed_dim": args.width,
                           "channel_dim": args.width, "out_dim": args.width, "num_blocks": args.layers,
                           "num_heads": 8}},
        branches={"property": {"type": "mlp", "out_dim": 64, "hidden_dim": 64}},
        leaves={"expr": {"type": "regressor", "branch": "property"}},
    )  # fmt: skip
    model = NeuralTreeModel(config)
    task = RegressionTask("expr", "expr", {"protein": "sequence"}, ["expr_delta_meanF"])
    task.fit(model.leaves["expr"], task.prepare(frame, split="train"))
    collator = TreeCollator({"protein": RootEncoder(ProteinTokenizer(), 256)}, [task])
    rows = task.prepare(frame, split="train")[["sequence", "expr_delta_meanF"]].to_dict("records")
    loader = DataLoader(
        rows, batch_size=args.batch_size, shuffle=True, collate_fn=lambda r: {"expr": collator(r)}
    )
    system = NeuralTreeSystem(model, [task], optim={"lr": 3e-4, "warmup_steps": 0, "schedule": "constant"})
    history = LossHistory()
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=args.devices,
        strategy=FSDPStrategy(auto_wrap_policy={TransformerBlock}, sharding_strategy="FULL_SHARD"),
        max_steps=args.steps,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[history],
    )
    trainer.fit(system, train_dataloaders=loader)
    peak = torch.cuda.max_memory_allocated() / 2**20
    rank = trainer.global_rank
    params = sum(p.numel() for p in NeuralTreeModel(config).parameters())
    first, last = history.losses[0], sum(history.losses[-5:]) / len(history.losses[-5:])
    print(
        f"rank {rank}/{trainer.world_size}: {params:,} parameters, loss {first:.4f} -> {last:.4f}, peak {peak:.0f} MiB"
    )
    if not all(math.isfinite(x) for x in history.losses) or not last < first:
        raise SystemExit(f"rank {rank}: FSDP run did not train (losses {history.losses})")


if __name__ == "__main__":
    main()
