"""The bundled Hydra task and data configs build real tasks and load the real files."""

import pathlib

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import cortex
from cortex.data.datamodule import TreeDataModule
from cortex.data.tokenization import ProteinTokenizer

CONFIGS = pathlib.Path(cortex.__file__).parent / "configs"
REPO = pathlib.Path(__file__).parents[2]
TASK_FILES = sorted((CONFIGS / "tasks").glob("*.yaml"))


@pytest.mark.parametrize("path", TASK_FILES + sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_file_opens_with_a_comment(path):
    assert path.read_text().startswith("# ")


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_task_config_builds_and_loads_real_rows(path, monkeypatch):
    monkeypatch.setenv("CORTEX_DATA_DIR", str(REPO / "data"))
    ((name, entry),) = OmegaConf.load(path).items()
    data_cfg = OmegaConf.load(CONFIGS / "data" / f"{entry.data}.yaml")[entry.data]
    task = instantiate(entry.task, data=instantiate(data_cfg))
    assert task.name == name and len(task.label_columns) == entry.leaf.out_dim
    module = TreeDataModule([task], tokenizers={"protein": ProteinTokenizer()}, max_lengths={"protein": 256})
    module.setup()
    frames = module.frames[name]
    assert all(len(frames[split]) > 0 for split in ("train", "validation", "test"))
    for frame in frames.values():
        assert not frame.sequence.str.contains("*", regex=False).any()
    if entry.data == "rbd":  # site-held-out: no test site is seen in training
        assert set(frames["train"].site_spike).isdisjoint(frames["test"].site_spike)
    if entry.data == "gfp":
        assert set(frames["test"].tape_like_split) == {"test"} and len(frames["train"]) > 20000
