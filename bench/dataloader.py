"""Data throughput on the GFP file: sequences per second turned into ready (B, L) batches.

Compares the original's way (the training process receives strings and tokenizes them one by one, then pads
with pad_sequence, as its roots did inside forward) with TreeDataModule loaders that tokenize and pad in 0, 1 or 2
DataLoader worker processes. Every variant reads the same rows (the GFP TAPE-like train split, stop codons
dropped) in the same seeded order; worker start-up is included in the timing.

    .venv/bin/python bench/dataloader.py [--num-sequences 12800] [--batch-size 64]

Writes bench/results/dataloader.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from cortex.data import ColumnSplit, DropRows, TableData
from cortex.data.datamodule import RowDataset, TreeDataModule
from cortex.data.tokenization import ProteinTokenizer
from cortex.tasks import RegressionTask

REPO = pathlib.Path(__file__).resolve().parents[1]


def build_module(num_workers: int, batch_size: int) -> TreeDataModule:
    data = TableData(
        REPO / "data" / "gfp_sarkisyan2016.csv.gz",
        split=ColumnSplit("tape_like_split", {"train": ["train"], "test": ["test"]}),
        filters=[DropRows("sequence", r"\*", reason="stop codon")],
    )
    task = RegressionTask("gfp", "gfp", {"protein": "sequence"}, ["log_brightness"], data=data)
    return TreeDataModule(
        [task], tokenizers={"protein": ProteinTokenizer()}, max_lengths={"protein": 256},
        batch_size=batch_size, num_workers=num_workers, seed=0,
    )  # fmt: skip


def time_loader(batches, num_sequences: int) -> float:
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch)
        if seen >= num_sequences:
            break
    return seen / (time.perf_counter() - start)


def in_process(module: TreeDataModule, batch_size: int):
    """The original's path: strings reach the training process, which encodes each and pads."""
    tokenizer = module.encoders["protein"].tokenizer
    frame = module.frames["gfp"]["train"]
    loader = DataLoader(
        RowDataset(frame, ["sequence", "log_brightness"]),
        batch_size=batch_size,
        sampler=module.train_sampler(0),
        collate_fn=lambda rows: {key: [row[key] for row in rows] for key in rows[0]},
    )
    for rows in loader:
        ids = [torch.tensor(tokenizer.encode(s, add_special_tokens=False)) for s in rows["sequence"]]
        input_ids = pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id)
        yield input_ids


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-sequences", type=int, default=12800)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    module = build_module(0, args.batch_size)
    module.setup("fit")
    results["in_process_tokenize"] = time_loader(in_process(module, args.batch_size), args.num_sequences)
    for workers in (0, 1, 2):
        module = build_module(workers, args.batch_size)
        module.setup("fit")
        loader = module.task_dataloader("gfp", "train")
        batches = (b.root_inputs["protein"]["input_ids"] for b in loader)
        results[f"workers_{workers}"] = time_loader(batches, args.num_sequences)
        del loader
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    )
    out = {"seq_per_s": {k: round(v, 1) for k, v in results.items()}, "machine": machine,
           "num_sequences": args.num_sequences, "batch_size": args.batch_size}  # fmt: skip
    path = REPO / "bench" / "results" / "dataloader.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
