"""Streaming prediction and embedding: sequences from CSV / Parquet / FASTA, in chunks, through a saved tree, to
Parquet or CSV, written chunk by chunk, so memory is bounded by `chunk_size` rows whatever the input size.

Prediction columns (per leaf; regression targets named `<leaf>` when T = 1, else `<leaf>_<t>`):
  regressor: `<target>_mean`, `<target>_std`: the ensemble's predictive mean and standard deviation in original
    units, std = sqrt(mean_e scale_e^2 + var_e loc_e) (aleatoric + epistemic; the member spread alone when
    E > 1 is `var_e loc_e`);
  classifier: `<leaf>_prob_<k>`: ensemble-mean class probabilities, and `<leaf>_class` (argmax).
Language-model leaves are not predicted (their output is per position; use `cortex-design` or the model).
Embeddings: `embedding_<d>` (d < D), the attention-masked mean over positions of the trunk features (or of a
branch's features averaged over its ensemble members).
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from cortex.data.collate import RootEncoder, padded_length

logger = logging.getLogger(__name__)

FASTA_SUFFIXES: tuple[str, ...] = (".fasta", ".fa", ".faa", ".fasta.gz", ".fa.gz", ".faa.gz")
CSV_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".pq")
PREDICTED_LEAF_TYPES: tuple[str, ...] = ("regressor", "classifier")


def table_format(path: str | os.PathLike, *, where: str) -> str:
    """ "fasta", "csv" or "parquet" from a file name's suffix; ValueError otherwise."""
    name = os.fspath(path).lower()
    for fmt, suffixes in (("fasta", FASTA_SUFFIXES), ("csv", CSV_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if name.endswith(suffixes):
            return fmt
    raise ValueError(
        f"{where} {os.fspath(path)!r} has an unknown suffix; expected one of "
        f"{FASTA_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES}"
    )


def read_fasta(path: str | os.PathLike, chunk_size: int) -> Iterator[pd.DataFrame]:
    """FASTA records as frames of at most `chunk_size` rows with columns `id` (header up to the first space)
    and `sequence` (lines joined)."""
    opener = gzip.open if os.fspath(path).endswith(".gz") else open
    ids: list[str] = []
    sequences: list[str] = []
    parts: list[str] | None = None
    with opener(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                if parts is not None:
                    sequences.append("".join(parts))
                    if len(ids) == chunk_size:
                        yield pd.DataFrame({"id": ids, "sequence": sequences})
                        ids, sequences = [], []
                ids.append(line[1:].split(maxsplit=1)[0] if len(line) > 1 else "")
                parts = []
            elif parts is None:
                raise ValueError(f"{os.fspath(path)!r} line {number} holds residues before any '>' header")
            else:
                parts.append(line)
    if parts is not None:
        sequences.append("".join(parts))
    if ids:
        yield pd.DataFrame({"id": ids, "sequence": sequences})


def read_table_chunks(path: str | os.PathLike, chunk_size: int = 10_000) -> Iterator[pd.DataFrame]:
    """Frames of at most `chunk_size` rows from a CSV (gzip, tab-separated for .tsv), Parquet or FASTA file."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}; expected a positive number of rows")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input {os.fspath(path)!r} does not exist")
    fmt = table_format(path, where="input")
    if fmt == "fasta":
        yield from read_fasta(path, chunk_size)
    elif fmt == "csv":
        sep = "\t" if ".tsv" in os.fspath(path).lower() else ","
        yield from pd.read_csv(path, sep=sep, chunksize=chunk_size)
    else:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
            yield batch.to_pandas()


def count_rows(path: str | os.PathLike) -> int | None:
    """Rows of a Parquet file from its footer (no data read); None for other formats (the progress bar then
    counts without a total)."""
    if table_format(path, where="input") == "parquet":
        return pq.ParquetFile(path).metadata.num_rows
    return None


class TableWriter:
    """Appends frames to a Parquet file (one row group per frame) or a CSV file (header once)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.format = table_format(path, where="output")
        if self.format == "fasta":
            raise ValueError(f"output {self.path!r}: FASTA holds no predictions; expected .parquet or .csv")
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        self._parquet: pq.ParquetWriter | None = None
        self._rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.format == "parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table)
        else:
            sep = "\t" if ".tsv" in self.path.lower() else ","
            frame.to_csv(
                self.path, mode="w" if self._rows == 0 else "a", header=self._rows == 0, index=False, sep=sep
            )
        self._rows += len(frame)

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class TreeInference:
    """Batched prediction / embedding with a `NeuralTreeModel` on one device, in eval mode, without gradients.

    Args:
        model: the tree (moved to `device`).
        columns: root name -> input column; default {only root: "sequence"}.
        batch_size: rows per forward pass.
        device: "cpu", "cuda", "cuda:1", or "auto" (cuda when available).
        truncation: False: a sequence longer than its root's max_length is an error; True: truncated.
    """

    def __init__(
        self,
        model: Any,
        columns: Mapping[str, str] | None = None,
        *,
        batch_size: int = 64,
        device: str = "auto",
        truncation: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected a positive number of rows")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        roots = list(model.config.trunk_config.roots)
        if columns is None:
            if len(roots) != 1:
                raise ValueError(f"name the input column of each root {roots} (columns={{root: column}})")
            columns = {roots[0]: "sequence"}
        missing = [r for r in roots if r not in columns]
        unknown = [r for r in columns if r not in model.roots]
        if missing or unknown:
            raise ValueError(
                f"columns names roots {list(columns)}; missing {missing}, unknown {unknown}; expected {roots}"
            )
        self.columns = {root: columns[root] for root in roots}
        self.batch_size = batch_size
        self.encoders = {
            root: RootEncoder(model.get_tokenizer(root), model.roots[root].max_length, truncation)
            for root in roots
        }
        leaf_types = {name: node["type"] for name, node in model.config.leaves.items()}
        self.leaf_types = {n: t for n, t in leaf_types.items() if t in PREDICTED_LEAF_TYPES}

    def root_inputs(self, frame: pd.DataFrame, *, where: str) -> dict[str, dict[str, torch.Tensor]]:
        """{root: {"input_ids", "attention_mask"} (B, L)} on the device, padded to a multiple of 8."""
        inputs = {}
        for root, column in self.columns.items():
            if column not in frame.columns:
                raise ValueError(
                    f"{where}: no column {column!r} for root {root!r}; columns are {list(frame.columns)}"
                )
            encoder = self.encoders[root]
            sequences = frame[column]
            encoder.check_sequences(sequences, where=f"{where} column {column!r}")
            ids = encoder.encode(sequences.tolist(), where=f"{where} column {column!r}")
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            width = padded_length(
                int(lengths.max()), pad_to_multiple_of=8, length_buckets=None, max_length=encoder.max_length
            )
            input_ids = np.full((len(ids), width), encoder.tokenizer.pad_token_id, dtype=np.int64)
            for i, row in enumerate(ids):
                input_ids[i, : len(row)] = row
            attention_mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)  # (B, L)
            inputs[root] = {
                "input_ids": torch.from_numpy(input_ids).to(self.device),
                "attention_mask": torch.from_numpy(attention_mask).to(self.device),
            }
        return inputs

    def batches(self, frame: pd.DataFrame) -> Iterator[tuple[int, pd.DataFrame]]:
        for start in range(0, len(frame), self.batch_size):
            yield start, frame.iloc[start : start + self.batch_size]

    @torch.inference_mode()
    def predict(
        self, frame: pd.DataFrame, leaves: Sequence[str] | None = None, *, where: str = "rows"
    ) -> pd.DataFrame:
        """Prediction columns (module docstring) for the rows of `frame`, in order, index 0..n-1."""
        leaves = list(self.leaf_types) if leaves is None else list(leaves)
        bad = [leaf for leaf in leaves if leaf not in self.leaf_types]
        if bad:
            raise ValueError(f"cannot predict leaves {bad}; predictable leaves are {list(self.leaf_types)}")
        if not leaves:
            raise ValueError("the model has no regressor or classifier leaf to predict")
        parts = []
        for start, rows in self.batches(frame):
            outputs = self.model(
                self.root_inputs(rows, where=f"{where} {start}..{start + len(rows) - 1}"), leaves=leaves
            )
            columns: dict[str, np.ndarray] = {}
            for leaf in leaves:
                output = outputs.leaf_outputs[leaf]
                if self.leaf_types[leaf] == "regressor":
                    loc, scale = output.loc.double(), output.scale.double()  # (E, B, T)
                    mean = loc.mean(0)
                    std = (scale.pow(2).mean(0) + loc.var(0, unbiased=False)).sqrt()  # (B, T)
                    for t in range(mean.shape[-1]):
                        name = leaf if mean.shape[-1] == 1 else f"{leaf}_{t}"
                        columns[f"{name}_mean"] = mean[:, t].cpu().numpy()
                        columns[f"{name}_std"] = std[:, t].cpu().numpy()
                else:
                    probs = output.logits.double().softmax(-1).mean(0)  # (B, K)
                    for k in range(probs.shape[-1]):
                        columns[f"{leaf}_prob_{k}"] = probs[:, k].cpu().numpy()
                    columns[f"{leaf}_class"] = probs.argmax(-1).cpu().numpy()
            parts.append(pd.DataFrame(columns))
        return pd.concat(parts, ignore_index=True)

    @torch.inference_mode()
    def embed(self, frame: pd.DataFrame, source: str = "trunk", *, where: str = "rows") -> pd.DataFrame:
        """`embedding_<d>` columns: masked mean over positions of the trunk's (source="trunk") or a branch's
        features (ensemble-averaged), float32."""
        if source != "trunk" and source not in self.model.branches:
            raise ValueError(
                f"embedding source {source!r}; expected 'trunk' or a branch of {list(self.model.branches)}"
            )
        parts = []
        for start, rows in self.batches(frame):
            _, trunk = self.model.forward_trunk(
                self.root_inputs(rows, where=f"{where} {start}..{start + len(rows) - 1}")
            )
            features = trunk.last_hidden_state  # (B, L, D)
            if source != "trunk":
                branch = self.model.branches[source](trunk.last_hidden_state, trunk.attention_mask)
                features = branch.last_hidden_state.mean(0)  # (E, B, L, D) -> (B, L, D)
            mask = trunk.attention_mask.to(features.dtype).unsqueeze(-1)  # (B, L, 1)
            pooled = (features * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (B, D)
            values = pooled.float().cpu().numpy()
            parts.append(pd.DataFrame(values, columns=[f"embedding_{d}" for d in range(values.shape[1])]))
        return pd.concat(parts, ignore_index=True)


def run_inference(
    inference: TreeInference,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    mode: str = "predict",
    leaves: Sequence[str] | None = None,
    source: str = "trunk",
    chunk_size: int = 10_000,
    keep_columns: Sequence[str] | None = None,
    progress: bool = True,
) -> int:
    """Streams `input_path` in chunks of `chunk_size` rows through `inference.predict` (mode "predict") or
    `inference.embed` (mode "embed") and appends each chunk's rows to `output_path`, preceded by the input
    columns `keep_columns` (default: every input column). Returns the number of rows written."""
    if mode not in ("predict", "embed"):
        raise ValueError(f"mode={mode!r}; expected 'predict' or 'embed'")
    rows = 0
    with (
        TableWriter(output_path) as writer,
        tqdm(total=count_rows(input_path), unit="seq", disable=not progress, desc=mode) as bar,
    ):
        for chunk in read_table_chunks(input_path, chunk_size):
            chunk = chunk.reset_index(drop=True)
            where = f"{os.fspath(input_path)!r} rows {rows}.."
            if mode == "predict":
                result = inference.predict(chunk, leaves, where=where)
            else:
                result = inference.embed(chunk, source, where=where)
            kept = list(chunk.columns) if keep_columns is None else list(keep_columns)
            missing = [c for c in kept if c not in chunk.columns]
            if missing:
                raise ValueError(f"keep_columns {missing} are not input columns {list(chunk.columns)}")
            writer.write(pd.concat([chunk[kept], result], axis=1))
            rows += len(chunk)
            bar.update(len(chunk))
    if rows == 0:
        raise ValueError(f"input {os.fspath(input_path)!r} has no rows")
    return rows


__all__ = [
    "TableWriter",
    "TreeInference",
    "count_rows",
    "read_fasta",
    "read_table_chunks",
    "run_inference",
    "table_format",
]
