"""cortex-predict / cortex-embed and the streaming inference behind them, on a tiny saved tree."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from cortex.cli.predict import run
from cortex.inference import TreeInference, read_table_chunks, run_inference
from cortex.model import NeuralTreeModel
from cortex.trainer import fit_tasks

from .helpers import rbd_slice, rbd_tasks, tiny_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = tiny_model(ensemble_size=3)
    fit_tasks(model, rbd_tasks(), rbd_slice(64))
    directory = tmp_path_factory.mktemp("model")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def rows():
    return rbd_slice(50)[["mutant", "sequence"]]


def _write_fasta(path, frame):
    with open(path, "w") as handle:
        for mutant, sequence in zip(frame["mutant"], frame["sequence"]):
            # 10 residues a line: records span several lines
            lines = [sequence[i : i + 10] for i in range(0, len(sequence), 10)]
            handle.write(f">{mutant} RBD mutant\n" + "\n".join(lines) + "\n")


def test_predictions_match_the_model_and_combine_ensemble_uncertainty(saved_model, rows):
    model = NeuralTreeModel.from_pretrained(saved_model).eval()
    predicted = TreeInference(model, batch_size=16, device="cpu").predict(rows)
    assert len(predicted) == len(rows)
    with torch.no_grad():
        outputs = model(**model.tokenize(rows["sequence"].tolist()))
    loc, scale = (
        outputs.leaf_outputs["bind"].loc[..., 0].double(),
        outputs.leaf_outputs["bind"].scale[..., 0].double(),
    )
    np.testing.assert_allclose(predicted["bind_mean"], loc.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    expected_std = (scale.pow(2).mean(0) + loc.var(0, unbiased=False)).sqrt()
    np.testing.assert_allclose(predicted["bind_std"], expected_std.numpy(), rtol=1e-5, atol=1e-6)
    assert (predicted["bind_std"] > scale.pow(2).mean(0).sqrt().numpy() - 1e-9).all()
    probs = predicted[["binds_prob_0", "binds_prob_1"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-9)
    np.testing.assert_array_equal(predicted["binds_class"], probs.argmax(1))


@pytest.mark.parametrize("suffix", ["csv", "parquet", "fasta"])
def test_cortex_predict_reads_each_format_and_streams_in_chunks(saved_model, rows, tmp_path, suffix):
    source = tmp_path / f"in.{suffix}"
    if suffix == "csv":
        rows.to_csv(source, index=False)
    elif suffix == "parquet":
        rows.to_parquet(source, index=False)
    else:
        _write_fasta(source, rows)
    output = tmp_path / "predictions.parquet"
    written = run("predict", [str(saved_model), str(source), str(output), "--chunk-size", "20", "--batch-size", "8",
                              "--device", "cpu", "--no-progress"])  # fmt: skip
    assert written == len(rows)
    assert pq.ParquetFile(output).num_row_groups == 3  # 50 rows in chunks of 20: written incrementally
    table = pd.read_parquet(output)
    key = "id" if suffix == "fasta" else "mutant"
    assert table[key].tolist() == rows["mutant"].tolist()
    reference = TreeInference(NeuralTreeModel.from_pretrained(saved_model), device="cpu").predict(rows)
    np.testing.assert_allclose(table["expr_mean"], reference["expr_mean"], rtol=1e-5)
    assert {"bind_std", "expr_std", "binds_prob_1"} <= set(table.columns)


def test_cortex_embed_console_script_writes_csv(saved_model, rows, tmp_path):
    source = tmp_path / "in.parquet"
    rows.to_parquet(source, index=False)
    output = tmp_path / "embeddings.csv"
    code = "from cortex.cli.predict import embed_main; embed_main()"
    result = subprocess.run(
        [sys.executable, "-c", code, str(saved_model), str(source), str(output), "--keep-columns", "mutant",
         "--source", "property", "--device", "cpu"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(output)
    assert list(table.columns) == ["mutant"] + [f"embedding_{d}" for d in range(16)]
    model = NeuralTreeModel.from_pretrained(saved_model)
    expected = TreeInference(model, device="cpu").embed(rows, source="property")
    np.testing.assert_allclose(
        table.filter(like="embedding_").to_numpy(), expected.to_numpy(), rtol=1e-4, atol=1e-5
    )


def test_trunk_embedding_is_the_masked_mean_of_trunk_features(saved_model, rows):
    model = NeuralTreeModel.from_pretrained(saved_model).eval()
    sequences = ["NITNLCPFGEVFNATRFASVYAWN", "NITNLCPF"]
    embedded = TreeInference(model, device="cpu").embed(pd.DataFrame({"sequence": sequences})).to_numpy()
    with torch.no_grad():
        _, trunk = model.forward_trunk({"protein": model.tokenize(sequences[1:])})
    np.testing.assert_allclose(embedded[1], trunk.last_hidden_state[0].mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named(saved_model, tmp_path):
    model = NeuralTreeModel.from_pretrained(saved_model)
    inference = TreeInference(model, device="cpu")
    with pytest.raises(ValueError, match=r"row 1 has unknown residue 'J'"):
        inference.predict(pd.DataFrame({"sequence": ["MKT", "MJK"]}))
    with pytest.raises(ValueError, match=r"no column 'sequence'.*columns are \['seq'\]"):
        inference.predict(pd.DataFrame({"seq": ["MKT"]}))
    with pytest.raises(ValueError, match=r"cannot predict leaves \['nope'\]"):
        inference.predict(pd.DataFrame({"sequence": ["MKT"]}), leaves=["nope"])
    with pytest.raises(ValueError, match=r"unknown suffix"):
        list(read_table_chunks(saved_model / "config.json"))
    bad_fasta = tmp_path / "bad.fasta"
    bad_fasta.write_text("MKT\n>a\nMKT\n")
    with pytest.raises(ValueError, match="line 1 holds residues before any '>' header"):
        list(read_table_chunks(bad_fasta))
    with pytest.raises(ValueError, match=r"output .*FASTA holds no predictions"):
        run_inference(inference, bad_fasta, tmp_path / "out.fasta")
