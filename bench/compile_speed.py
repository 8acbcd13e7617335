"""Training steps/s of the same tree and data, eager vs `model.compile()`, and model FLOPs utilisation.

    python bench/compile_speed.py --device cuda --precision bf16-mixed        # GPU (H100/H200)
    python bench/compile_speed.py --device cpu --tiny                         # CPU smoke run

Configurations (issue 5):
  (a) the original's protein property + generation tree (spec 8: `4_guided_diffusion`, `train_protein_model`):
      one root (conv1d or transformer) of width 128 or 512 on GFP sequences (238 residues padded to 256),
      batch 128, a property branch (conv1d, mean pooling, 2 members) with a regressor on log-brightness and a
      generation branch (conv1d) with an MLM leaf; mask corruption with Beta(3, 1) per-example noise levels.
  (b) the same tree on a 12-layer, width-768 transformer root; reports MFU = achieved FLOP/s / the bf16
      matmul peak measured in the same run.
A training step is forward (both leaves' losses inside `forward(labels=...)`, so inside the compiled graph),
backward and an Adam step, under torch.autocast for bf16-mixed. Warm-up steps (compilation included) are
excluded from timing; CUDA is synchronised around the timed region. FLOPs per step are counted with
torch.utils.flop_counter on one eager step (matmuls, convolutions and attention, forward and backward).

Imports only torch, transformers and cortex's model, corruption and data (no hydra, datasets or lightning).
Writes a JSON file (default bench/results/compile.json) and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from cortex.corruption import MaskCorruption
from cortex.data.collate import RootEncoder, padded_length
from cortex.data.tokenization import ProteinTokenizer
from cortex.model import NeuralTreeConfig, NeuralTreeModel

ROOT = Path(__file__).resolve().parents[1]
GFP = ROOT / "data" / "gfp_sarkisyan2016.csv.gz"
PRECISIONS = ("bf16-mixed", "32-true")


def tree_config(
    root_type: str, width: int, num_blocks: int, num_heads: int, max_length: int, branch_width: int
):
    """The property + generation tree on one root of `width` features."""
    root = {"type": root_type, "max_length": max_length, "embed_dim": width, "channel_dim": width,
            "out_dim": width, "num_blocks": num_blocks}  # fmt: skip
    if root_type == "transformer":
        root["num_heads"] = num_heads
    else:
        root["kernel_size"] = 5
    return NeuralTreeConfig(
        roots={"protein": root},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={
            "property": {
                "type": "conv1d",
                "out_dim": 8,
                "channel_dim": branch_width,
                "num_blocks": 2,
                "kernel_size": 5,
                "pooling": "mean",
                "ensemble_size": 2,
            },
            "generation": {
                "type": "conv1d",
                "out_dim": branch_width,
                "channel_dim": branch_width,
                "num_blocks": 2,
                "kernel_size": 5,
            },
        },
        leaves={
            "log_brightness": {"type": "regressor", "branch": "property"},
            "protein_mlm": {"type": "mlm", "branch": "generation", "root": "protein"},
        },
    )


def gfp_rows(num_rows: int) -> tuple[list[str], list[float]]:
    """The first `num_rows` GFP genotypes without a stop codon: (sequences, log_brightness)."""
    sequences, targets = [], []
    with gzip.open(GFP, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            if "*" in row["sequence"]:
                continue
            sequences.append(row["sequence"])
            targets.append(float(row["log_brightness"]))
            if len(sequences) == num_rows:
                break
    if len(sequences) < num_rows:
        raise ValueError(f"{GFP} has {len(sequences)} usable rows; the benchmark asked for {num_rows}")
    return sequences, targets


def make_batches(tokenizer, sequences, targets, batch_size: int, length: int, device):
    """Batches of {"input_ids", "attention_mask"} padded to `length` (one length bucket) and (B, 1) targets."""
    encoder = RootEncoder(tokenizer, max_length=length)
    pad = encoder.tokenizer.pad_token_id
    batches = []
    for start in range(0, len(sequences) - batch_size + 1, batch_size):
        ids = encoder.encode(sequences[start : start + batch_size], where="GFP")
        width = padded_length(
            max(map(len, ids)), pad_to_multiple_of=None, length_buckets=[length], max_length=length
        )
        input_ids = torch.full((batch_size, width), pad, dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
        inputs = {"input_ids": input_ids.to(device), "attention_mask": (input_ids != pad).long().to(device)}
        labels = torch.tensor(targets[start : start + batch_size], dtype=torch.float32)[:, None].to(device)
        batches.append((inputs, labels))
    return batches


class Run:
    """One model + optimizer + data; `step(i)` is one training step on batch i (mod the number of batches)."""

    def __init__(self, config, batches, device, precision: str, compiled: bool, seed: int = 0):
        torch.manual_seed(seed)
        self.model = NeuralTreeModel(config).to(device).train()
        self.process = MaskCorruption(self.model.get_tokenizer("protein").mask_token_id).to(device)
        self.model.attach_corruption({"protein": self.process})
        targets = torch.cat([labels for _, labels in batches])
        self.model.leaves["log_brightness"].fit_target_standardization(targets.cpu().float())
        self.model.to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=3e-4, betas=(0.99, 0.999))
        self.batches = batches
        self.device = torch.device(device)
        self.autocast = precision == "bf16-mixed"
        if compiled:
            self.model.compile()

    def forward_loss(self, index: int) -> torch.Tensor:
        inputs, labels = self.batches[index % len(self.batches)]
        noise = self.process.sample_noise_level(labels.shape[0], device=self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(
                {"protein": {**inputs, "noise_level": noise}},
                labels={"log_brightness": labels, "protein_mlm": None},
            )
        return out.loss

    def step(self, index: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.forward_loss(index).backward()
        self.optimizer.step()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(run: Run, warmup: int, steps: int, device: str) -> dict[str, float]:
    synchronize(device)
    start = time.perf_counter()
    run.step(0)  # first step: compilation for the compiled run
    synchronize(device)
    first = time.perf_counter() - start
    for i in range(1, warmup):
        run.step(i)
    synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        run.step(warmup + i)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "first_step_s": first}


def flops_per_step(run: Run) -> float:
    """FLOPs of one eager training step (forward + backward; the optimizer's elementwise work is not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run.forward_loss(0).backward()
    run.optimizer.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def graph_breaks(run: Run) -> int:
    inputs, labels = run.batches[0]
    noise = run.process.sample_noise_level(labels.shape[0], device=run.device)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.autocast):
        explanation = torch._dynamo.explain(run.model)(
            {"protein": {**inputs, "noise_level": noise}},
            labels={"log_brightness": labels, "protein_mlm": None},
        )
    return int(explanation.graph_break_count)


def matmul_peak(device: str, precision: str, size: int, repeats: int) -> float:
    """Measured matmul FLOP/s: (size x size) @ (size x size) in bf16 (bf16-mixed) or fp32, best of 3 timings."""
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = math.inf
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16-mixed", choices=PRECISIONS)
    parser.add_argument(
        "--tiny", action="store_true", help="CPU smoke sizes (widths 16/32, batch 8, length 64)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 10; tiny 3)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30; tiny 4)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "compile.json"))
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available; use --device cpu --tiny")
    if args.tiny:
        widths, batch_size, length, large = (16, 32), 8, 64, {"width": 32, "num_blocks": 2, "num_heads": 2}
        warmup, steps, peak_size, peak_repeats = args.warmup or 3, args.steps or 4, 512, 10
    else:
        widths, batch_size, length, large = (
            (128, 512),
            128,
            256,
            {"width": 768, "num_blocks": 12, "num_heads": 12},
        )
        warmup, steps, peak_size, peak_repeats = args.warmup or 10, args.steps or 30, 8192, 50
    if warmup < 2:
        raise ValueError(f"--warmup {warmup}: expected at least 2 (the first step compiles)")
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sequences, targets = gfp_rows(batch_size * 4)
    batches = make_batches(ProteinTokenizer(), sequences if not args.tiny else [s[: length - 8] for s in sequences],
                           targets, batch_size, length, args.device)  # fmt: skip

    cases = [
        (f"a/{root_type}-{width}", root_type, {"width": width, "num_blocks": 2, "num_heads": 4 if width <= 128 else 8})
        for root_type in ("conv1d", "transformer")
        for width in widths
    ] + [("b/transformer-12x768" if not args.tiny else "b/transformer-tiny", "transformer", large)]  # fmt: skip

    peak = matmul_peak(args.device, args.precision, peak_size, peak_repeats)
    rows, total_breaks = [], 0
    for name, root_type, size in cases:
        branch_width = 128 if size["width"] >= 128 else size["width"]
        config = tree_config(
            root_type, size["width"], size["num_blocks"], size["num_heads"], length, branch_width
        )
        eager = Run(config, batches, args.device, args.precision, compiled=False)
        flops = flops_per_step(eager)
        breaks = graph_breaks(eager)
        torch._dynamo.reset()
        eager_timing = time_steps(eager, warmup, steps, args.device)
        del eager
        compiled = Run(config, batches, args.device, args.precision, compiled=True)
        compiled_timing = time_steps(compiled, warmup, steps, args.device)
        del compiled
        torch._dynamo.reset()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        total_breaks += breaks
        rows.append(
            {
                "case": name,
                "params": sum(p.numel() for p in NeuralTreeModel(config).parameters()),
                "eager_steps_per_s": eager_timing["steps_per_s"],
                "compiled_steps_per_s": compiled_timing["steps_per_s"],
                "speedup": compiled_timing["steps_per_s"] / eager_timing["steps_per_s"],
                "compile_first_step_s": compiled_timing["first_step_s"],
                "flops_per_step": flops,
                "mfu_eager": flops * eager_timing["steps_per_s"] / peak,
                "mfu_compiled": flops * compiled_timing["steps_per_s"] / peak,
                "graph_breaks": breaks,
            }
        )

    speedups = [row["speedup"] for row in rows if row["case"].startswith("a/")]
    large_row = next(row for row in rows if row["case"].startswith("b/"))
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none (cpu smoke)"
    result = {
        # Geometric mean over the (a) cases; per-case numbers are in "cases".
        "speedup_compiled_vs_eager": math.exp(sum(map(math.log, speedups)) / len(speedups)),
        "speedup_min_a": min(speedups),
        "mfu_large": large_row["mfu_compiled"],
        "graph_breaks": total_breaks,
        "gpu": device_name,
        "matmul_peak_flops": peak,
        "precision": args.precision,
        "batch_size": batch_size,
        "length": length,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "tiny": args.tiny,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python bench/compile_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "cases": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    header = (
        f"{'case':<24}{'eager it/s':>12}{'compiled it/s':>15}{'speedup':>9}{'MFU compiled':>14}{'breaks':>8}"
    )
    lines = [
        f"device: {device_name}, precision {args.precision}, matmul peak {peak / 1e12:.2f} TFLOP/s",
        header,
    ]
    for row in rows:
        lines.append(
            f"{row['case']:<24}{row['eager_steps_per_s']:>12.2f}{row['compiled_steps_per_s']:>15.2f}"
            f"{row['speedup']:>9.2f}{100 * row['mfu_compiled']:>13.1f}%{row['graph_breaks']:>8}"
        )
    lines.append(f"speedup (geo-mean over a): {result['speedup_compiled_vs_eager']:.2f}; written to {out}")
    sys.stdout.write("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
