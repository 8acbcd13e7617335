"""Safe loading: model directories load from safetensors and JSON only, pickles placed in them are never
executed, every torch.load in the tree uses weights_only=True, and damaged weight files fail loudly."""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers import tiny_config, tiny_setup
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from cortex.model import NeuralTreeModel
from cortex.training import NeuralTreeSystem

SRC = Path(__file__).resolve().parents[2] / "src" / "cortex"


class WritesAFile:
    """Unpickling this runs `open(path, "w")`: the file's existence proves the pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant_pickles(directory: Path, sentinel: Path) -> None:
    payload = pickle.dumps({"state_dict": WritesAFile(sentinel)})
    for name in ("pytorch_model.bin", "model.ckpt", "training_args.bin", "optimizer.pt"):
        (directory / name).write_bytes(payload)
    assert not sentinel.exists()
    with pytest.raises(OSError):  # the payload is live: a plain unpickle would write the file
        pickle.loads(payload)
        raise OSError("executed")
    sentinel.unlink()


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_torch_load_in_the_tree_is_weights_only():
    """Reads the call sites (ast, so docstrings and comments do not count): torch.load always passes
    weights_only=True, nothing unpickles, and no call passes trust_remote_code=True."""
    torch_loads = 0
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                torch_loads += 1
                flag = _keyword(node, "weights_only")
                assert isinstance(flag, ast.Constant) and flag.value is True, (
                    f"{where}: torch.load without weights_only=True"
                )
            assert not (owner in ("pickle", "dill", "cloudpickle") and node.func.attr in ("load", "loads")), (
                f"{where} unpickles"
            )
            remote = _keyword(node, "trust_remote_code")
            assert not (isinstance(remote, ast.Constant) and remote.value is True), (
                f"{where} passes trust_remote_code=True"
            )
    assert SRC.is_dir()


@pytest.mark.parametrize("remove_safetensors", [False, True])
def test_loading_a_directory_never_executes_a_planted_pickle(tmp_path, remove_safetensors):
    model = NeuralTreeModel(tiny_config())
    model.save_pretrained(tmp_path)
    sentinel = tmp_path.parent / f"executed-{remove_safetensors}"
    _plant_pickles(tmp_path, sentinel)
    if remove_safetensors:
        (tmp_path / "model.safetensors").unlink()
        with pytest.raises(OSError, match=r"safetensors|model"):
            NeuralTreeModel.from_pretrained(tmp_path)
        with pytest.raises(OSError):
            AutoModel.from_pretrained(tmp_path)
    else:
        for loader in (NeuralTreeModel.from_pretrained, AutoModel.from_pretrained):
            loaded = loader(tmp_path)
            for key, value in model.state_dict().items():
                torch.testing.assert_close(loaded.state_dict()[key], value)
    assert not sentinel.exists(), "a pickle from the model directory was executed"


def test_remote_code_in_a_model_directory_is_never_imported(tmp_path):
    NeuralTreeModel(tiny_config()).save_pretrained(tmp_path)
    sentinel = tmp_path.parent / "remote-code-ran"
    (tmp_path / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModel.from_pretrained(tmp_path)  # no trust_remote_code: the registered class is used
    assert type(loaded) is NeuralTreeModel
    assert not sentinel.exists()


def test_a_crafted_lightning_checkpoint_is_refused_without_running_it(tmp_path):
    sentinel = tmp_path / "ckpt-ran"
    bad = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, bad)  # a real zip checkpoint whose pickle we then replace
    bad.write_bytes(pickle.dumps({"state_dict": WritesAFile(sentinel), "epoch": 0}))
    model, tasks, corruption, datamodule = tiny_setup(num_rows=32)
    system = NeuralTreeSystem(model, tasks, corruption, optim={"lr": 1e-3})
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(Exception, match=r"(?i)weights.only|unpickl|pickle|load"):
        trainer.fit(system, datamodule=datamodule, ckpt_path=str(bad))
    assert not sentinel.exists()


def _saved(tmp_path) -> tuple[NeuralTreeModel, Path]:
    model = NeuralTreeModel(tiny_config())
    model.save_pretrained(tmp_path)
    return model, tmp_path / "model.safetensors"


@pytest.mark.parametrize("keep_fraction", [0.0, 0.1, 0.5, 0.99])
def test_a_truncated_safetensors_file_fails_loudly(tmp_path, keep_fraction):
    _, weights = _saved(tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(Exception, match=r"(?i)safetensors|header|deserializ|incomplete|metadata|file"):
        NeuralTreeModel.from_pretrained(tmp_path)


def test_a_garbled_safetensors_header_fails_loudly(tmp_path):
    _, weights = _saved(tmp_path)
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"(?i)safetensors|header|deserializ|utf|json"):
        NeuralTreeModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["missing", "unexpected", "shape"])
def test_a_partial_or_mismatched_weights_file_is_never_loaded_silently(tmp_path, damage):
    _, weights = _saved(tmp_path)
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    if damage == "missing":
        del tensors[name]
    elif damage == "unexpected":
        tensors["roots.protein.extra.weight"] = torch.zeros(2)
    else:
        tensors[name] = torch.zeros(*[s + 1 for s in tensors[name].shape])
    save_file(tensors, weights, metadata={"format": "pt"})
    error = RuntimeError if damage == "shape" else ValueError  # HF raises on mismatched shapes itself
    with pytest.raises(error, match=re.escape(name) if damage == "missing" else "extra|mismatched"):
        NeuralTreeModel.from_pretrained(tmp_path)
