"""Where rows come from and which split they belong to.

Sources: a CSV or Parquet path, a pandas DataFrame, an HF `datasets.Dataset`, a mapping of equal-length numpy
arrays (design loops retrain on in-memory history), or a mapping split -> any of these (explicit files, an HF
`DatasetDict`). Splits: a split column (`ColumnSplit`), a seeded random split (`RandomSplit`), or a seeded
split that keeps whole groups together (`GroupSplit`, for example all mutants of a site in one split).
`TableData` ties a source, row filters and a split together and returns one DataFrame per split.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")


def load_table(source: Any, *, where: str = "data source") -> pd.DataFrame:
    """One table as a DataFrame with a fresh 0..n-1 index.

    `source`: a .csv / .csv.gz / .tsv / .parquet path, a DataFrame, a `datasets.Dataset`, or a mapping of
    column name -> 1-D array (all of the same length).
    """
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        name = path.lower().removesuffix(".gz").removesuffix(".bz2").removesuffix(".zip").removesuffix(".xz")
        if name.endswith(".csv"):
            return pd.read_csv(path)
        if name.endswith(".tsv"):
            return pd.read_csv(path, sep="\t")
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        raise ValueError(f"{where}: cannot read {path!r}; expected a .csv, .csv.gz, .tsv or .parquet file")
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True)
    import datasets  # deferred: importing datasets costs about a second

    if isinstance(source, datasets.Dataset):
        return source.to_pandas().reset_index(drop=True)
    if isinstance(source, Mapping):
        lengths = {str(key): len(value) for key, value in source.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{where}: columns have different lengths {lengths}; expected equal lengths")
        return pd.DataFrame({key: np.asarray(value) for key, value in source.items()})
    raise ValueError(
        f"{where}: unsupported source of type {type(source).__name__}; expected a CSV/Parquet path, a pandas "
        "DataFrame, a datasets.Dataset or DatasetDict, a mapping of numpy arrays, or a mapping split -> source"
    )


def require_columns(frame: pd.DataFrame, columns: Sequence[str], *, where: str) -> None:
    """Raises ValueError naming the first missing column and listing the available ones."""
    for column in columns:
        if column not in frame.columns:
            raise ValueError(f"{where}: missing column {column!r}; available columns: {list(frame.columns)}")


class ColumnSplit:
    """Rows go to the split named by a column's value.

    Args:
        column: the split column (for GFP `tape_like_split`).
        values: split name -> the column values that mean it, for example
            {"train": ["train"], "test": ["test"]}. Defaults to each split's own name. Any other value is an
            error (a typo such as "tets" never silently drops rows).
    """

    def __init__(self, column: str, values: Mapping[str, Sequence[Any]] | None = None) -> None:
        self.column = column
        values = values or {split: [split] for split in SPLITS}
        unknown = set(values) - set(SPLITS)
        if unknown:
            raise ValueError(f"ColumnSplit: unknown split names {sorted(unknown)}; expected some of {SPLITS}")
        self.values = {split: list(vals) for split, vals in values.items()}

    def __call__(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        require_columns(frame, [self.column], where="ColumnSplit")
        column = frame[self.column]
        known = [value for vals in self.values.values() for value in vals]
        bad = ~column.isin(known)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"split column {self.column!r} has unknown value {column.iloc[row]!r} at row {row} "
                f"({int(bad.sum())} rows with unknown values: {sorted(map(str, column[bad].unique()))[:10]}); "
                f"expected one of {known}"
            )
        return {split: np.flatnonzero(column.isin(vals).to_numpy()) for split, vals in self.values.items()}


def _check_fractions(fractions: Mapping[str, float], where: str) -> dict[str, float]:
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f"{where}: unknown split names {sorted(unknown)}; expected some of {SPLITS}")
    if any(f < 0 for f in fractions.values()) or not np.isclose(sum(fractions.values()), 1.0):
        raise ValueError(f"{where}: fractions {dict(fractions)} must be non-negative and sum to 1")
    return {split: float(fractions[split]) for split in SPLITS if split in fractions}


def _assign(count: int, fractions: dict[str, float]) -> list[tuple[str, int, int]]:
    """(split, start, stop) slices of a permutation of `count` items; the last split takes the remainder."""
    bounds, start = [], 0
    names = list(fractions)
    for i, split in enumerate(names):
        stop = count if i == len(names) - 1 else start + round(fractions[split] * count)
        bounds.append((split, start, min(stop, count)))
        start = min(stop, count)
    return bounds


class RandomSplit:
    """A seeded random split of rows by fractions, e.g. {"train": 0.8, "validation": 0.1, "test": 0.1}."""

    def __init__(self, fractions: Mapping[str, float], seed: int = 0) -> None:
        self.fractions = _check_fractions(fractions, "RandomSplit")
        self.seed = seed

    def __call__(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        order = np.random.default_rng(self.seed).permutation(len(frame))
        return {split: np.sort(order[a:b]) for split, a, b in _assign(len(frame), self.fractions)}


class GroupSplit:
    """A seeded split that sends whole groups (all rows with one value of `column`) to one split.

    With `column` a mutated site, test sites are unseen in training (position-held-out). Fractions count
    groups, not rows.
    """

    def __init__(self, column: str, fractions: Mapping[str, float], seed: int = 0) -> None:
        self.column = column
        self.fractions = _check_fractions(fractions, "GroupSplit")
        self.seed = seed

    def __call__(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        require_columns(frame, [self.column], where="GroupSplit")
        column = frame[self.column]
        if column.isna().any():
            row = int(np.flatnonzero(column.isna().to_numpy())[0])
            raise ValueError(
                f"GroupSplit: group column {self.column!r} is missing at row {row}; expected a value"
            )
        values = column.unique()
        try:
            groups = np.sort(values)
        except TypeError as error:  # e.g. text and numbers: no common order to split reproducibly by
            kinds = {type(value).__name__: value for value in values}
            raise ValueError(
                f"GroupSplit: group column {self.column!r} mixes value types that cannot be ordered "
                f"({', '.join(f'{kind} e.g. {value!r}' for kind, value in sorted(kinds.items()))}); "
                "expected one kind of group id (all text or all numbers)"
            ) from error
        order = np.random.default_rng(self.seed).permutation(len(groups))
        return {
            split: np.flatnonzero(column.isin(groups[order[a:b]]).to_numpy())
            for split, a, b in _assign(len(groups), self.fractions)
        }


class DropRows:
    """Drops the rows whose `column` matches the regular expression `pattern` and logs how many.

    Used to leave out, explicitly, rows the data cannot use (e.g. stop codons '*' in GFP and RBD).
    """

    def __init__(self, column: str, pattern: str, reason: str = "") -> None:
        self.column = column
        self.pattern = pattern
        self.reason = reason
        re.compile(pattern)

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        require_columns(frame, [self.column], where="DropRows")
        matches = frame[self.column].astype(str).str.contains(self.pattern, regex=True).to_numpy()
        logger.info(
            "DropRows: dropping %d of %d rows whose %r matches %r%s",
            int(matches.sum()),
            len(frame),
            self.column,
            self.pattern,
            f" ({self.reason})" if self.reason else "",
        )
        return frame.loc[~matches].reset_index(drop=True)


class TableData:
    """Rows for one task: a source, row filters and a split.

    Args:
        source: anything `load_table` reads, or a mapping split -> such a source (explicit train/test files,
            an HF DatasetDict; DatasetDict's "valid"/"val" keys are read as "validation").
        split: `ColumnSplit`, `RandomSplit`, `GroupSplit` (or any callable frame -> {split: row positions});
            required for a single table, not allowed with a mapping of splits.
        filters: callables frame -> frame applied before splitting (e.g. `DropRows`).
        validation_fraction: when the split yields no validation rows, a seeded fraction of train rows
            becomes the validation split.
        seed: seed of that carve-out.
        balance_by: column(s) whose values define the groups the train loader balances (round-robin
            minority upsampling, spec section 4); None for plain shuffling.
    """

    def __init__(
        self,
        source: Any,
        split: Any = None,
        filters: Sequence[Any] = (),
        validation_fraction: float = 0.0,
        seed: int = 0,
        balance_by: str | Sequence[str] | None = None,
    ) -> None:
        if not 0.0 <= validation_fraction < 1.0:
            raise ValueError(f"TableData: validation_fraction={validation_fraction}; expected 0 <= value < 1")
        self.source = source
        self.split = split
        self.filters = list(filters)
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.balance_by = balance_by

    def load(self) -> dict[str, pd.DataFrame]:
        """split name -> DataFrame (fresh index), for every split in ("train", "validation", "test")."""
        if (
            isinstance(self.source, Mapping)
            and set(self.source)
            and set(self.source) <= _SPLIT_ALIASES.keys()
        ):
            if self.split is not None:
                raise ValueError(
                    "TableData: a mapping of splits already splits the rows; expected split=None"
                )
            frames = {split: pd.DataFrame() for split in SPLITS}
            for key, source in self.source.items():
                frame = load_table(source, where=f"data source {key!r}")
                for row_filter in self.filters:
                    frame = row_filter(frame)
                frames[_SPLIT_ALIASES[key]] = frame
        else:
            if self.split is None:
                raise ValueError(
                    "TableData: a single table needs a split (ColumnSplit, RandomSplit or GroupSplit); got None"
                )
            frame = load_table(self.source)
            for row_filter in self.filters:
                frame = row_filter(frame)
            positions = self.split(frame)
            frames = {split: frame.iloc[positions.get(split, [])].reset_index(drop=True) for split in SPLITS}
        if self.validation_fraction > 0 and len(frames["validation"]) == 0:
            train = frames["train"]
            order = np.random.default_rng(self.seed).permutation(len(train))
            count = round(self.validation_fraction * len(train))
            frames["validation"] = train.iloc[np.sort(order[:count])].reset_index(drop=True)
            frames["train"] = train.iloc[np.sort(order[count:])].reset_index(drop=True)
        return frames


_SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
}
