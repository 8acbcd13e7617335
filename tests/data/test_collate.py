"""TreeCollator: per-root tokenization, padding, typed batches, and the bad-input errors."""

import pickle

import pandas as pd
import pytest
import torch

from cortex.data import RootEncoder, TreeCollator, padded_length
from cortex.data.collate import TreeBatch
from cortex.data.tokenization import ProteinTokenizer
from cortex.tasks import ClassificationTask, RegressionTask


def test_padded_length():
    assert padded_length(13, pad_to_multiple_of=8, length_buckets=None, max_length=None) == 16
    assert padded_length(16, pad_to_multiple_of=8, length_buckets=None, max_length=None) == 16
    assert padded_length(237, pad_to_multiple_of=8, length_buckets=None, max_length=238) == 238
    assert padded_length(13, pad_to_multiple_of=8, length_buckets=[20, 64], max_length=None) == 20
    assert padded_length(70, pad_to_multiple_of=8, length_buckets=[20, 64], max_length=None) == 72
    assert padded_length(13, pad_to_multiple_of=None, length_buckets=None, max_length=None) == 13


def test_protein_batch_is_typed_and_padded(gfp_rows):
    rows = gfp_rows[~gfp_rows.sequence.str.contains("*", regex=False)].head(5).copy()
    rows["sequence"] = [s[: 10 + 3 * i] for i, s in enumerate(rows.sequence)]  # lengths 10..22
    task = RegressionTask("gfp", "gfp_leaf", {"protein": "sequence"}, ["log_brightness", "replicates_stdev"])
    tokenizer = ProteinTokenizer()
    collator = TreeCollator({"protein": RootEncoder(tokenizer, max_length=64)}, [task], pad_to_multiple_of=8)
    batch = collator(rows.to_dict("records"))
    ids, mask = batch.root_inputs["protein"]["input_ids"], batch.root_inputs["protein"]["attention_mask"]
    assert ids.dtype == mask.dtype == torch.int64 and ids.shape == (5, 24)
    assert mask.sum(1).tolist() == [10, 13, 16, 19, 22]
    assert ids[0, :10].tolist() == tokenizer(rows.sequence.iloc[0])["input_ids"]
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()
    labels = batch.labels["gfp"]
    assert labels.dtype == torch.float32 and labels.shape == (5, 2)
    # Single-replicate rows have no stdev: NaN marks the missing label, never imputed.
    assert torch.isnan(labels[:, 1]).tolist() == rows.replicates_stdev.isna().tolist()
    assert batch.batch_size == 5


def test_bert_vocabulary_gets_spaced_residues(bert_tokenizer):
    encoder = RootEncoder(bert_tokenizer, max_length=32)
    assert encoder.separate_residues
    task = ClassificationTask("c", "leaf", {"ab": "seq"}, label="y", num_classes=2)
    collator = TreeCollator({"ab": encoder}, [task], pad_to_multiple_of=8)
    batch = collator([{"seq": "EVQLV", "y": 1}, {"seq": "QV[MASK]L", "y": -100}])
    ids = batch.root_inputs["ab"]["input_ids"]
    vocab = bert_tokenizer.get_vocab()
    assert ids[0, :7].tolist() == [vocab[t] for t in ["[CLS]", "E", "V", "Q", "L", "V", "[SEP]"]]
    assert ids[1, :6].tolist() == [vocab[t] for t in ["[CLS]", "Q", "V", "[MASK]", "L", "[SEP]"]]
    assert ids.shape == (2, 8) and batch.labels["c"].tolist() == [1, -100]


def test_check_sequences_errors_name_the_row():
    encoder = RootEncoder(ProteinTokenizer(), max_length=12)
    encoder.check_sequences(pd.Series(["MKT", "ACDEF"]), where="t")
    with pytest.raises(ValueError, match=r"row 1 has unknown residue '\*' at position 2"):
        encoder.check_sequences(pd.Series(["MKT", "MK*A"]), where="t")
    with pytest.raises(ValueError, match="row 1 is an empty sequence"):
        encoder.check_sequences(pd.Series(["MKT", ""]), where="t")
    with pytest.raises(ValueError, match="row 0 is nan"):
        encoder.check_sequences(pd.Series([float("nan"), "MKT"]), where="t")
    with pytest.raises(ValueError, match=r"row 1 has 13 residues.*max_length 12.*truncation"):
        encoder.check_sequences(pd.Series(["MKT", "A" * 13]), where="t")


def test_explicit_truncation_is_logged_never_silent(caplog):
    encoder = RootEncoder(ProteinTokenizer(), max_length=12, truncation=True)
    with caplog.at_level("WARNING"):
        encoder.check_sequences(pd.Series(["MKT", "A" * 13]), where="t")
    assert "truncating 1 rows to 12 tokens" in caplog.text
    assert [len(ids) for ids in encoder.encode(["MKT", "A" * 13])] == [3, 12]


def test_encode_rechecks_in_workers(bert_tokenizer):
    with pytest.raises(ValueError, match="row 0 has 13 tokens, more than max_length 12"):
        RootEncoder(ProteinTokenizer(), max_length=12).encode(["A" * 13])
    with pytest.raises(ValueError, match=r"row 1 .* residue the tokenizer does not know"):
        RootEncoder(bert_tokenizer).encode(["EVQ", "EVX"])  # X is not in AntiBERTy's vocabulary


def test_collator_rejects_unknown_roots():
    task = RegressionTask("t", "leaf", {"missing_root": "seq"}, ["y"])
    with pytest.raises(ValueError, match=r"root 'missing_root'.*roots: \['protein'\]"):
        TreeCollator({"protein": RootEncoder(ProteinTokenizer())}, [task])


def test_fast_character_path_equals_the_tokenizer(gfp_rows):
    tokenizer = ProteinTokenizer()
    encoder = RootEncoder(tokenizer, max_length=256)
    assert encoder.byte_to_id is not None
    sequences = gfp_rows.sequence[~gfp_rows.sequence.str.contains("*", regex=False)].head(64).tolist()
    assert encoder.encode(sequences) == tokenizer(sequences)["input_ids"]
    # Inline special tokens and whitespace take the tokenizer's own path, with the same ids.
    assert encoder.encode(["MK<mask>A", "M K"]) == tokenizer(["MK<mask>A", "M K"])["input_ids"]
    with pytest.raises(ValueError, match=r"row 1 .*does not know \('J' at position 1\)"):
        encoder.encode(["MKT", "MJ"])
    with pytest.raises(ValueError, match="row 0 has 300 tokens, more than max_length 256"):
        encoder.encode(["A" * 300])


def _two_task_collator():
    regression = RegressionTask(
        "gfp", "gfp_leaf", {"protein": "sequence"}, ["log_brightness", "replicates_stdev"]
    )
    classification = ClassificationTask(
        "bright", "bright_leaf", {"protein": "sequence"}, "is_bright", num_classes=2
    )
    encoder = RootEncoder(ProteinTokenizer(), max_length=256)
    return TreeCollator({"protein": encoder}, [regression, classification], pad_to_multiple_of=8)


def _rows(gfp_rows, n):
    rows = gfp_rows[~gfp_rows.sequence.str.contains("*", regex=False)].head(n).copy()
    rows["is_bright"] = (rows.log_brightness > rows.log_brightness.median()).astype(int)
    return rows.to_dict("records")


def _storage(tensor):
    return tensor.untyped_storage().data_ptr()


def test_batch_tensors_are_views_of_one_buffer(gfp_rows):
    batch = _two_task_collator()(_rows(gfp_rows, 7))
    tensors = [*batch.root_inputs["protein"].values(), *batch.labels.values()]
    assert {_storage(t) for t in tensors} == {_storage(batch.buffer)}
    assert all(t.data_ptr() % 64 == 0 for t in tensors)  # every dtype's alignment
    assert [t.dtype for t in tensors] == [torch.int64, torch.int64, torch.float32, torch.int64]
    moved = batch.to("cpu")
    assert _storage(moved.buffer) == _storage(batch.buffer)


def test_packed_batch_crosses_workers_as_one_shared_buffer(gfp_rows):
    """A batch from a DataLoader worker equals the in-process one and arrives as views of one shared buffer."""
    rows = _rows(gfp_rows, 12)
    collator = _two_task_collator()
    expected = [collator(rows[i : i + 4]) for i in range(0, 12, 4)]
    loader = torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=collator, num_workers=2)
    received = list(loader)
    assert len(received) == 3
    for got, want in zip(received, expected):
        assert got.buffer is not None and got.buffer.is_shared()
        tensors = [*got.root_inputs["protein"].values(), *got.labels.values()]
        assert {_storage(t) for t in tensors} == {_storage(got.buffer)}
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(got.root_inputs["protein"][key], want.root_inputs["protein"][key])
        assert torch.equal(got.labels["bright"], want.labels["bright"])
        assert torch.equal(got.labels["gfp"].isnan(), want.labels["gfp"].isnan())
        assert torch.equal(got.labels["gfp"].nan_to_num(), want.labels["gfp"].nan_to_num())


def test_batch_with_a_replaced_tensor_moves_tensor_by_tensor(gfp_rows):
    batch = _two_task_collator()(_rows(gfp_rows, 3))
    batch.labels["bright"] = torch.tensor([1, 0, 1])  # outside the buffer: the layout no longer describes it
    for copy in (pickle.loads(pickle.dumps(batch)), batch.to("cpu")):
        assert torch.equal(copy.labels["bright"], torch.tensor([1, 0, 1]))
        assert torch.equal(
            copy.root_inputs["protein"]["input_ids"], batch.root_inputs["protein"]["input_ids"]
        )


def test_packing_rejects_device_tensors_by_name():
    meta = torch.zeros(2, 3, dtype=torch.int64, device="meta")
    with pytest.raises(ValueError, match=r"root 'protein' input_ids is on meta"):
        TreeBatch.packed({"protein": {"input_ids": meta}}, {})
