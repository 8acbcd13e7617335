"""Bad-input sweep: property tests over the tokenizer, the collator, the table loaders, the model config and
the design constraints. Every generated case ends in a correct result or a ValueError/TypeError that names the
bad value; none crashes elsewhere, hangs (hypothesis deadline) or silently changes data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_helpers import assert_clear_error, count_case

from cortex.data.collate import RootEncoder, TreeCollator
from cortex.data.tables import ColumnSplit, DropRows, GroupSplit, RandomSplit, TableData, load_table
from cortex.data.tokenization import PROTEIN_VOCAB, ProteinTokenizer
from cortex.design.constraints import DesignConstraints
from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.tasks.classification import ClassificationTask
from cortex.tasks.regression import RegressionTask

TOKENIZER = ProteinTokenizer()
RESIDUES = "".join(t for t in PROTEIN_VOCAB if len(t) == 1)
FAST = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

# Text that stresses a tokenizer: residues, special tokens written inline, near-misses, unicode, control chars.
residue_text = st.text(alphabet=RESIDUES, min_size=1, max_size=40)
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
    st.lists(
        st.sampled_from(
            [
                *RESIDUES,
                "<mask>",
                "<pad>",
                "<mas",
                "k>",
                "<>",
                " ",
                "\t",
                "\u00e9",
                "\u2003",
                "\x00",
                "*",
                "X",
                "a",
            ]
        ),
        max_size=30,
    ).map("".join),
    residue_text,
)
odd_values = st.sampled_from([None, float("nan"), float("inf"), 7, 3.5, b"MKT", ["M", "K"], True])


@FAST
@given(hostile_text)
def test_tokenizer_validates_or_round_trips(text):
    count_case("tokenizer")
    try:
        TOKENIZER.validate_sequences([text], where="seqs")
    except ValueError as error:
        assert_clear_error(error, "seqs[0]")
        return
    ids = TOKENIZER(text, add_special_tokens=False)["input_ids"]
    assert TOKENIZER.unk_token_id not in ids
    # Nothing silently changed: decoding gives back the text without its whitespace.
    assert "".join(TOKENIZER.convert_ids_to_tokens(ids)) == "".join(text.split())


@FAST
@given(st.lists(st.one_of(hostile_text, odd_values), min_size=1, max_size=6), st.integers(1, 48))
def test_root_encoder_encodes_exactly_or_names_the_row(sequences, max_length):
    count_case("root_encoder")
    encoder = RootEncoder(TOKENIZER, max_length=max_length)
    try:
        ids = encoder.encode(sequences, where="col")
    except (ValueError, TypeError) as error:
        assert_clear_error(error, "row")
        return
    for sequence, row_ids in zip(sequences, ids):
        assert 0 < len(row_ids) <= max_length
        assert "".join(TOKENIZER.convert_ids_to_tokens(row_ids)) == "".join(sequence.split())


@FAST
@given(
    st.lists(residue_text, min_size=1, max_size=8),
    st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4), st.none()),
        min_size=8,
        max_size=8,
    ),
)
def test_regression_rows_are_prepared_and_collated_or_rejected(sequences, labels):
    count_case("collator_regression")
    frame = pd.DataFrame({"sequence": sequences, "y": pd.Series(labels[: len(sequences)], dtype=object)})
    task = RegressionTask("t", "t", {"protein": "sequence"}, ["y"])
    try:
        prepared = task.prepare(frame, split="train")
    except ValueError as error:
        assert_clear_error(error, "'y'")
        return
    collator = TreeCollator({"protein": RootEncoder(TOKENIZER, max_length=64)}, [task])
    batch = collator(prepared.to_dict("records"))
    expected = pd.to_numeric(frame["y"], errors="coerce").dropna().to_numpy(np.float32)
    assert torch.isfinite(batch.labels["t"]).all()
    np.testing.assert_array_equal(batch.labels["t"][:, 0].numpy(), expected)
    ids = batch.root_inputs["protein"]["input_ids"]
    mask = batch.root_inputs["protein"]["attention_mask"]
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    for row, sequence in enumerate(prepared["sequence"]):
        assert "".join(TOKENIZER.convert_ids_to_tokens(ids[row, : int(mask[row].sum())].tolist())) == sequence


@FAST
@given(
    st.lists(
        st.one_of(st.integers(-3, 5), st.floats(allow_nan=True), st.text(max_size=3), st.none()),
        min_size=1,
        max_size=8,
    )
)
def test_classification_labels_are_cleaned_or_rejected(labels):
    count_case("collator_classification")
    frame = pd.DataFrame({"sequence": ["MKT"] * len(labels), "c": pd.Series(labels, dtype=object)})
    task = ClassificationTask("c", "c", {"protein": "sequence"}, "c", num_classes=3)
    try:
        prepared = task.prepare(frame, split="train")
    except ValueError as error:
        assert_clear_error(error, "'c'", "row", "class")
        return
    collated = task.collate_labels(prepared.to_dict("records"))
    assert collated.dtype == torch.int64
    assert ((collated >= 0) & (collated < 3)).all()


@FAST
@given(
    st.dictionaries(
        st.text(max_size=6), st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=5), max_size=4
    ),
    st.sampled_from(["split", "sequence", "site", ""]),
)
def test_table_loaders_name_missing_columns_and_unequal_lengths(columns, column):
    count_case("tables")
    try:
        frame = load_table(columns, where="src")
    except ValueError as error:
        assert_clear_error(error, "src")
        return
    assert list(frame.columns) == [str(c) for c in columns]
    for splitter in (
        ColumnSplit(column),
        GroupSplit(column, {"train": 0.5, "test": 0.5}),
        DropRows(column, "x"),
    ):
        try:
            splitter(frame)
        except ValueError as error:
            assert_clear_error(error, repr(column), "split column")


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["train", "validation", "test", "tset", ""]), st.floats(allow_nan=True), max_size=4
    ),
    st.one_of(st.floats(allow_nan=True), st.integers(-2, 2)),
)
def test_split_fractions_are_checked(fractions, validation_fraction):
    count_case("splits")
    frame = pd.DataFrame({"sequence": ["MKT"] * 20})
    try:
        data = TableData(frame, split=RandomSplit(fractions, seed=0), validation_fraction=validation_fraction)
        frames = data.load()
    except ValueError as error:
        assert_clear_error(error, "fractions", "split names", "validation_fraction")
        return
    # Nothing lost or duplicated: the splits partition the rows.
    assert sum(len(f) for f in frames.values()) == len(frame)


def test_table_file_of_unknown_kind_is_named(tmp_path):
    path = tmp_path / "rows.xlsx"
    path.write_text("sequence\nMKT\n")
    with pytest.raises(ValueError, match=r"rows\.xlsx"):
        load_table(path)


BASE_TREE = {
    "roots": {
        "protein": {
            "type": "conv1d",
            "max_length": 16,
            "embed_dim": 4,
            "channel_dim": 4,
            "out_dim": 4,
            "num_blocks": 1,
        }
    },
    "trunk": {"type": "sum", "roots": ["protein"]},
    "branches": {"b": {"type": "mlp", "out_dim": 4, "hidden_dim": 4, "ensemble_size": 1}},
    "leaves": {"y": {"type": "regressor", "branch": "b", "out_dim": 1}},
}
BAD_VALUES = [-1, 0, 2.5, float("nan"), float("inf"), "x", None, True, [], {}]


@settings(max_examples=120, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([("roots", "protein"), ("trunk", None), ("branches", "b"), ("leaves", "y")]),
    st.sampled_from(
        [
            "type",
            "max_length",
            "embed_dim",
            "out_dim",
            "num_blocks",
            "kernel_size",
            "dropout",
            "roots",
            "ensemble_size",
            "hidden_dim",
            "branch",
            "pooling",
            "num_classes",
            "tokenizer",
            "nominal_label_var",
        ]
    ),
    st.sampled_from(BAD_VALUES),
)
def test_config_validation_names_the_bad_field_or_builds_a_working_model(node, field, value):
    count_case("config")
    kind, name = node
    tree = {
        k: {n: dict(v) for n, v in nodes.items()} if k != "trunk" else dict(nodes)
        for k, nodes in BASE_TREE.items()
    }
    target = tree[kind] if name is None else tree[kind][name]
    target[field] = value
    try:
        config = NeuralTreeConfig(**tree)
        model = NeuralTreeModel(config)
        inputs = model.tokenize(["MKTAYIAK", "MK"])
        with torch.no_grad():
            output = model(**inputs)
    except (ValueError, TypeError) as error:
        assert_clear_error(error, field, repr(value), str(value))
        return
    assert torch.isfinite(output.leaf_outputs["y"].loc).all()
    assert NeuralTreeConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


@FAST
@given(
    st.lists(st.one_of(st.integers(-2, 12), st.sampled_from([True, 1.5, "3", None])), max_size=4),
    st.dictionaries(
        st.one_of(st.integers(-1, 12), st.just("2")),
        st.one_of(st.text(max_size=3), st.lists(st.sampled_from(["K", "R", "<mask>", "-", "?"]), max_size=3)),
        max_size=3,
    ),
    st.one_of(st.none(), st.integers(-1, 4), st.just(1.5)),
    st.booleans(),
)
def test_design_constraints_bind_or_name_the_bad_value(immutable, allowed, budget, fixed_length):
    count_case("constraints")
    seeds = TOKENIZER(["MKTAYIAKQR", "MKTAY"], padding=True, return_tensors="pt")
    try:
        constraints = DesignConstraints(
            immutable_positions=immutable,
            allowed_tokens=allowed,
            max_edit_distance=budget,
            fixed_length=fixed_length,
        )
        bound = constraints.bind(seeds["input_ids"], seeds["attention_mask"], TOKENIZER)
    except (ValueError, TypeError) as error:
        assert_clear_error(error, *map(repr, [*immutable, *allowed, *allowed.values(), budget]), "position")
        return
    assert bound.is_feasible(seeds["input_ids"]).all()  # seeds satisfy their own constraints
    assert bound.sampling_mask.any(-1).all()
    for position in immutable:
        assert not bound.is_mutable[:, position].any()
    mutated = seeds["input_ids"].clone()
    mutated[:, 0] = TOKENIZER.convert_tokens_to_ids("W")
    expected = 0 not in immutable and (0 not in allowed or "W" in list(allowed[0]))
    expected = expected and (budget is None or budget >= 1)
    assert bound.is_feasible(mutated).tolist() == [expected, expected]


def test_nan_and_infinite_targets_never_reach_a_batch():
    frame = pd.DataFrame({"sequence": ["MKT", "MKA", "MKC"], "y": [1.0, math.nan, math.inf]})
    task = RegressionTask("t", "t", {"protein": "sequence"}, ["y"])
    with pytest.raises(ValueError, match=r"row 2 is inf"):
        task.prepare(frame, split="train")


@pytest.mark.parametrize("separator", ["\x1c", "\x1d", "\x1e", "\x1f"])
def test_information_separators_are_unknown_residues_not_whitespace(separator):
    # str.isspace() is True for them, but the tokenizer maps them to <unk>: validation must refuse them.
    with pytest.raises(ValueError, match=r"seqs\[0\] has unknown residue"):
        TOKENIZER.validate_sequences([f"A{separator}C"], where="seqs")
    TOKENIZER.validate_sequences(["A \tC\n"], where="seqs")  # whitespace the tokenizer drops stays allowed
