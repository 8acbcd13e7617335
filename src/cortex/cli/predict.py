"""`cortex-predict` and `cortex-embed`: a saved tree applied to a CSV / Parquet / FASTA file, streamed in chunks,
written to Parquet or CSV (see cortex.inference for the output columns).

    cortex-predict MODEL_DIR sequences.fasta predictions.parquet
    cortex-predict MODEL_DIR variants.csv.gz predictions.csv --column sequence --leaves bind,expr --device cuda
    cortex-embed MODEL_DIR sequences.parquet embeddings.parquet --source trunk --batch-size 256
    cortex-predict MODEL_DIR pairs.csv out.parquet --column heavy=vh --column light=vl   # two-root tree

Plain argparse (no Hydra): a prediction run has no config tree to compose, only paths and a few flags.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from cortex.inference import TreeInference, run_inference

logger = logging.getLogger(__name__)


def _parser(mode: str) -> argparse.ArgumentParser:
    what = "predictions with uncertainty" if mode == "predict" else "sequence embeddings"
    parser = argparse.ArgumentParser(
        prog=f"cortex-{mode}",
        description=f"Writes {what} of a saved cortex model for every sequence of a CSV, Parquet or FASTA file.",
    )
    parser.add_argument("model", help="directory written by NeuralTreeModel.save_pretrained")
    parser.add_argument("input", help="input table: .csv[.gz], .tsv[.gz], .parquet, .fasta/.fa/.faa[.gz]")
    parser.add_argument("output", help="output table: .parquet or .csv[.gz]")
    parser.add_argument(
        "--column",
        action="append",
        default=None,
        metavar="[ROOT=]COLUMN",
        help="input column of a root (repeat per root); default: 'sequence' for a one-root model",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass (default 64)")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="rows read and written at a time")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument(
        "--truncation", action="store_true", help="truncate sequences over a root's max_length"
    )
    parser.add_argument(
        "--keep-columns",
        default=None,
        help="comma-separated input columns copied to the output (default: all; '' for none)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if mode == "predict":
        parser.add_argument(
            "--leaves", default=None, help="comma-separated leaves (default: every regressor/classifier)"
        )
    else:
        parser.add_argument("--source", default="trunk", help="'trunk' (default) or a branch name")
    return parser


def _columns(values: Sequence[str] | None, roots: Sequence[str]) -> dict[str, str] | None:
    """["heavy=vh", "light=vl"] -> {"heavy": "vh", "light": "vl"}; ["seq"] -> {only root: "seq"}."""
    if not values:
        return None
    columns = {}
    for value in values:
        root, sep, column = value.partition("=")
        if not sep:
            if len(roots) != 1 or len(values) != 1:
                raise ValueError(
                    f"--column {value!r}: name the root (ROOT=COLUMN); the model's roots are {list(roots)}"
                )
            root, column = roots[0], value
        if not root or not column:
            raise ValueError(f"--column {value!r}; expected ROOT=COLUMN or COLUMN")
        columns[root] = column
    return columns


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def run(mode: str, argv: Sequence[str] | None = None) -> int:
    """Parses `argv` for `cortex-<mode>` and writes the output table; returns the number of rows written."""
    from cortex.model import NeuralTreeModel

    args = _parser(mode).parse_args(argv)
    model = NeuralTreeModel.from_pretrained(args.model)
    inference = TreeInference(
        model,
        _columns(args.column, list(model.config.trunk_config.roots)),
        batch_size=args.batch_size,
        device=args.device,
        truncation=args.truncation,
    )
    rows = run_inference(
        inference,
        args.input,
        args.output,
        mode=mode,
        leaves=_split(args.leaves) if mode == "predict" else None,
        source=args.source if mode == "embed" else "trunk",
        chunk_size=args.chunk_size,
        keep_columns=_split(args.keep_columns),
        progress=not args.no_progress,
    )
    logger.info("cortex-%s: wrote %d rows to %s", mode, rows, args.output)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `cortex-predict`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run("predict", argv)


def embed_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `cortex-embed`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run("embed", argv)


if __name__ == "__main__":
    main()
