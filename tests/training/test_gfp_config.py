"""The deep-mutational-scan branch config (`branches: [property_dms]`, used by bench/train_gfp.py) composes with
the GFP task and data entries, trains end to end through `cortex-train`'s run on real avGFP rows, and saves a
model whose property branch pools per position."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from transformers import AutoModel

import cortex
from cortex.cli.train import run
from cortex.model.layers import PositionWeightedPooling

CONFIGS = Path(cortex.__file__).parent / "configs"
GFP = Path(__file__).resolve().parents[2] / "data" / "gfp_sarkisyan2016.csv.gz"


def gfp_slice(path: Path) -> Path:
    """160 TAPE-like train rows and 40 test rows of the real table (stop-codon rows included: the data entry
    drops them)."""
    frame = pd.read_csv(GFP, nrows=4000)
    train = frame[frame["tape_like_split"] == "train"].head(160)
    test = frame[frame["tape_like_split"] == "test"].head(40)
    pd.concat([train, test]).to_csv(path, index=False)
    return path


def test_property_dms_trains_on_gfp_and_saves_a_position_weighted_tree(tmp_path):
    source = gfp_slice(tmp_path / "gfp.csv")
    overrides = [
        "tasks=[gfp_log_brightness]",
        "data=gfp",
        "branches=[property_dms]",
        f"data.gfp.source={source}",
        "roots.protein.embed_dim=8",
        "roots.protein.channel_dim=8",
        "roots.protein.out_dim=8",
        "branches.property.out_dim=8",
        "datamodule.batch_size=32",
        "trainer.max_epochs=1",
        "logger=none",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base=None):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path)
        cfg.model_dir = str(tmp_path / "model")
    assert cfg.branches.property.pooling == "position_weighted"
    model = AutoModel.from_pretrained(run(cfg))
    pooling = model.branches["property"].members[0].pooling
    assert isinstance(pooling, PositionWeightedPooling)
    assert pooling.weight.shape == (model.roots["protein"].max_length, 8)
    frame = pd.read_csv(source)
    inputs = model.tokenize(list(frame["sequence"][:4]))
    with torch.no_grad():
        loc = model(**inputs, leaves=["gfp_log_brightness"]).leaf_outputs["gfp_log_brightness"].loc
    assert loc.shape == (2, 4, 1) and torch.isfinite(loc).all()
