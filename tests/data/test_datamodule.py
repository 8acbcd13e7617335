"""TreeDataModule end to end on real GFP/RBD slices with a tiny real NeuralTreeModel."""

import numpy as np
import pandas as pd
import pytest
import torch

from cortex.data import ColumnSplit, DropRows, GroupSplit, RandomSplit, TableData, TreeBatch
from cortex.data.datamodule import TreeDataModule
from cortex.data.tokenization import ProteinTokenizer
from cortex.model import NeuralTreeConfig, NeuralTreeModel
from cortex.tasks import ClassificationTask, MLMTask, RegressionTask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = NeuralTreeConfig(
        roots={"protein": {"type": "conv1d", "max_length": 240, "embed_dim": 8, "channel_dim": 8, "out_dim": 8,
                           "num_blocks": 1}},
        trunk={"type": "sum", "roots": ["protein"]},
        branches={"property": {"type": "mlp", "out_dim": 8, "ensemble_size": 2}},
        leaves={
            "brightness": {"type": "regressor", "branch": "property", "out_dim": 2},
            "bright": {"type": "classifier", "branch": "property", "num_classes": 2},
            "protein_mlm": {"type": "mlm", "branch": "property", "root": "protein"},
        },
    )  # fmt: skip
    return NeuralTreeModel(config).eval()


def gfp_data(frame, **kwargs):
    return TableData(
        frame, split=ColumnSplit("tape_like_split", {"train": ["train"], "test": ["test"]}),
        filters=[DropRows("sequence", r"\*", reason="stop codons")], validation_fraction=0.1, seed=1, **kwargs,
    )  # fmt: skip


def regression_task():
    return RegressionTask(
        "gfp", "brightness", {"protein": "sequence"}, ["log_brightness", "replicates_stdev"]
    )


def collect(loader, limit=4):
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == limit:
            break
    return batches


def test_workers_produce_identical_batches(gfp_rows, model):
    loaders = {}
    for workers in (0, 2):
        module = TreeDataModule([regression_task()], model=model, data={"gfp": gfp_data(gfp_rows)}, batch_size=16,
                                num_workers=workers, seed=3)  # fmt: skip
        module.setup("fit")
        loaders[workers] = collect(module.task_dataloader("gfp", "train"), limit=5)
    for a, b in zip(loaders[0], loaders[2], strict=True):
        assert isinstance(b, TreeBatch)
        assert torch.equal(a.root_inputs["protein"]["input_ids"], b.root_inputs["protein"]["input_ids"])
        assert torch.equal(
            a.root_inputs["protein"]["attention_mask"], b.root_inputs["protein"]["attention_mask"]
        )
        assert torch.equal(
            a.labels["gfp"],
            b.labels["gfp"],
        ) or torch.allclose(a.labels["gfp"], b.labels["gfp"], equal_nan=True)


class _WorkerStrategy(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return torch.multiprocessing.get_sharing_strategy()


def test_workers_send_batches_by_the_configured_sharing_strategy(gfp_rows, model):
    expected = {"file_system": "file_system", None: torch.multiprocessing.get_sharing_strategy()}
    for strategy, seen in expected.items():
        module = TreeDataModule([regression_task()], model=model, data={"gfp": gfp_data(gfp_rows)}, batch_size=16,
                                num_workers=1, sharing_strategy=strategy)  # fmt: skip
        module.setup("fit")
        init = module.task_dataloader("gfp", "train").worker_init_fn
        probe = torch.utils.data.DataLoader(
            _WorkerStrategy(), num_workers=1, worker_init_fn=init, collate_fn=list
        )
        assert [s for batch in probe for s in batch] == [seen, seen]
    with pytest.raises(ValueError, match=r"sharing_strategy='shm'; expected None or one of"):
        TreeDataModule(
            [regression_task()], model=model, data={"gfp": gfp_data(gfp_rows)}, sharing_strategy="shm"
        )


def test_model_consumes_only_tensors_no_tokenizer_in_forward(gfp_rows, model, monkeypatch):
    task = regression_task()
    module = TreeDataModule([task], model=model, data={"gfp": gfp_data(gfp_rows)}, batch_size=8)
    module.setup("fit")
    task.fit(model.leaves["brightness"], module.frames["gfp"]["train"])
    batch = next(iter(module.task_dataloader("gfp", "train")))
    assert batch.root_inputs["protein"]["input_ids"].shape == (8, 240)  # 238 residues padded to max_length

    # From here on any tokenizer call fails: the forward, loss and backward must not need one.
    def refuse(*args, **kwargs):
        raise AssertionError("tokenizer called during forward")

    monkeypatch.setattr(ProteinTokenizer, "__call__", refuse)
    monkeypatch.setattr(ProteinTokenizer, "encode", refuse)
    outputs = model(batch.root_inputs, leaves=[task.leaf])
    loss = task.loss(model.leaves[task.leaf], outputs, batch)
    assert torch.isfinite(loss)
    loss.backward()
    metrics = task.metrics(outputs, batch)
    assert set(metrics) >= {"rmse", "nll", "spearman_rho"} and np.isfinite(metrics["rmse"])


def test_stop_codons_dropped_explicitly_and_splits(gfp_rows, model, caplog):
    module = TreeDataModule([regression_task()], model=model, data={"gfp": gfp_data(gfp_rows)})
    with caplog.at_level("INFO"):
        module.setup()
    stops = gfp_rows.sequence.str.contains("*", regex=False)
    assert f"dropping {int(stops.sum())} of {len(gfp_rows)} rows" in caplog.text
    frames = module.frames["gfp"]
    kept = gfp_rows[~stops]
    assert len(frames["test"]) == (kept.tape_like_split == "test").sum()
    assert len(frames["train"]) + len(frames["validation"]) == (kept.tape_like_split == "train").sum()
    assert len(frames["validation"]) == round(0.1 * (kept.tape_like_split == "train").sum())


def test_regression_standardization_fits_on_train_only(gfp_rows, model):
    task = regression_task()
    module = TreeDataModule([task], model=model, data={"gfp": gfp_data(gfp_rows)})
    module.setup()
    leaf = model.leaves["brightness"]
    task.fit(leaf, module.frames["gfp"]["train"])
    train = module.frames["gfp"]["train"]
    expected = torch.tensor([train.log_brightness.mean(), train.replicates_stdev.mean()], dtype=torch.float32)
    torch.testing.assert_close(leaf.target_mean, expected)
    torch.testing.assert_close(
        leaf.target_std[0], torch.tensor(train.log_brightness.std(), dtype=torch.float32)
    )
    all_rows = pd.concat(module.frames["gfp"].values())
    assert not np.isclose(all_rows.log_brightness.mean(), expected[0].item(), atol=1e-4)


def test_multitask_combined_loader_balances_and_modes(gfp_rows, model):
    frame = gfp_rows.copy()
    frame["bright"] = (frame.log_brightness > 2.5).astype(int)
    tasks = [
        regression_task(),
        ClassificationTask("gfp_bright", "bright", {"protein": "sequence"}, label="bright", num_classes=2),
        MLMTask("mlm", "protein_mlm", {"protein": "sequence"}),
    ]
    data = {
        "gfp": gfp_data(frame),
        "gfp_bright": gfp_data(frame, balance_by="bright"),
        "mlm": gfp_data(frame),
    }
    lengths = {}
    for mode in ("min_size", "max_size_cycle"):
        module = TreeDataModule(tasks, model=model, data=data, batch_size=32, mode=mode)
        module.setup()
        steps = list(module.train_dataloader())
        lengths[mode] = len(steps)
        batch, _, _ = steps[0]
        assert set(batch) == {"gfp", "gfp_bright", "mlm"}
        assert batch["mlm"].labels == {} and batch["gfp_bright"].labels["gfp_bright"].dtype == torch.int64
    classes = module.frames["gfp_bright"]["train"].bright
    sampler = module.train_sampler(1)
    counts = np.bincount(classes.to_numpy()[sampler.epoch_indices(0)])
    assert abs(counts[0] - counts[1]) <= 1 and counts[0] == classes.value_counts().max()
    loader_sizes = [len(module.task_dataloader(t.name, "train")) for t in tasks]
    assert lengths == {"min_size": min(loader_sizes), "max_size_cycle": max(loader_sizes)}
    # One forward with the MLM task: its targets come from the root output, not from labels.
    outputs = model(batch["mlm"].root_inputs, leaves=["protein_mlm"])
    assert torch.isfinite(tasks[2].loss(model.leaves["protein_mlm"], outputs, batch["mlm"]))


def test_set_epoch_reaches_the_loader(gfp_rows, model):
    module = TreeDataModule(
        [regression_task()], model=model, data={"gfp": gfp_data(gfp_rows)}, batch_size=400
    )
    module.setup()
    loader = module.task_dataloader("gfp", "train")
    first = next(iter(loader)).labels["gfp"]
    loader.sampler.set_epoch(1)
    second = next(iter(loader)).labels["gfp"]
    assert not torch.equal(first.nan_to_num(), second.nan_to_num())
    loader.sampler.set_epoch(0)
    assert torch.equal(next(iter(loader)).labels["gfp"].nan_to_num(), first.nan_to_num())


def test_tokenizers_come_from_the_saved_model_directory(tmp_path, rbd_rows, model):
    model.save_pretrained(tmp_path)
    rows = rbd_rows[~rbd_rows.sequence.str.contains("*", regex=False)].head(200)
    task = RegressionTask(
        "rbd", "brightness", {"protein": "sequence"}, ["bind_delta_log10Ka", "expr_delta_meanF"]
    )
    data = TableData(rows, split=GroupSplit("site_spike", {"train": 0.8, "test": 0.2}, seed=0))
    module = TreeDataModule([task], model=str(tmp_path), data={"rbd": data}, batch_size=8)
    module.setup()
    assert module.encoders["protein"].max_length == 240
    frames = module.frames["rbd"]
    assert set(frames["train"].site_spike).isdisjoint(frames["test"].site_spike)
    batch, _, loader_index = next(iter(module.test_dataloader()))  # "sequential": one task's batch at a time
    assert loader_index == 0 and batch.labels["rbd"].shape == (8, 2)
    assert batch.root_inputs["protein"]["input_ids"].shape[1] == 208  # 201 residues, multiple of 8


def test_in_memory_numpy_history(model):
    rng = np.random.default_rng(0)
    sequences = np.array(["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 20)) for _ in range(40)])
    data = TableData(
        {"seq": sequences, "y": rng.normal(size=40)}, split=RandomSplit({"train": 0.75, "test": 0.25})
    )
    task = RegressionTask("hist", "brightness", {"protein": "seq"}, ["y"])
    module = TreeDataModule(
        [task], tokenizers={"protein": ProteinTokenizer()}, data={"hist": data}, batch_size=10
    )
    module.setup()
    assert [len(module.frames["hist"][s]) for s in ("train", "validation", "test")] == [30, 0, 10]
    assert sum(b["hist"].batch_size for b, _, _ in module.train_dataloader()) == 30


BAD_CASES = [
    ("missing column", lambda f: f.drop(columns=["log_brightness"]), r"missing column 'log_brightness'; available"),
    ("split value", lambda f: f.assign(tape_like_split=["train"] * (len(f) - 1) + ["tets"]),
     r"split column 'tape_like_split' has unknown value 'tets' at row \d+"),
    ("non-numeric", lambda f: f.assign(log_brightness=["high", *list(f.log_brightness[1:])]),
     r"target column 'log_brightness' row 0 is 'high'; expected a number"),
    ("infinite", lambda f: f.assign(log_brightness=[np.inf, *list(f.log_brightness[1:])]),
     r"target column 'log_brightness' row 0 is inf; expected a finite number"),
    ("no labels", lambda f: f.assign(log_brightness=np.where(f.tape_like_split == "test", np.nan, f.log_brightness)),
     r"split 'test': none of its \d+ rows has a label"),
    ("unknown residue", lambda f: f.assign(sequence=[*list(f.sequence[:5]), "MKJ", *list(f.sequence[6:])]),
     r"column 'sequence': row 5 has unknown residue 'J' at position 2"),
    ("empty", lambda f: f.assign(sequence=["", *list(f.sequence[1:])]), r"row 0 is an empty sequence"),
    ("too long", lambda f: f.assign(sequence=["A" * 241, *list(f.sequence[1:])]),
     r"row 0 has 241 residues .* longer than the root's max_length 240"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "corrupt", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_errors_name_row_and_column(gfp_rows, model, case, corrupt, message):
    rows = gfp_rows[~gfp_rows.sequence.str.contains("*", regex=False)]
    frame = corrupt(pd.concat([rows.head(40), rows.tail(20)]).reset_index(drop=True))  # both splits
    task = RegressionTask("gfp", "brightness", {"protein": "sequence"}, ["log_brightness"])
    data = TableData(frame, split=ColumnSplit("tape_like_split", {"train": ["train"], "test": ["test"]}))
    with pytest.raises(ValueError, match=message):
        TreeDataModule([task], model=model, data={"gfp": data}).setup()


def test_bad_module_arguments(model):
    task = regression_task()
    with pytest.raises(ValueError, match="mode='longest'; expected one of"):
        TreeDataModule([task], model=model, mode="longest")
    with pytest.raises(ValueError, match="task 'gfp' has no data"):
        TreeDataModule([task], model=model)
    with pytest.raises(ValueError, match="data given for unknown tasks \\['gpf'\\]"):
        TreeDataModule([task], model=model, data={"gpf": {}})


def test_group_split_refuses_group_ids_without_an_order():
    """Text and numbers mixed in a group column (a fuzz case) have no order to split reproducibly by."""
    frame = pd.DataFrame({"sequence": ["MKT"] * 4, "site": [3, "3", 5, "x"]})
    with pytest.raises(
        ValueError, match=r"group column 'site' mixes value types .*\(int e\.g\. 5, str e\.g\. 'x'\)"
    ):
        GroupSplit("site", {"train": 0.5, "test": 0.5})(frame)
