"""cortex-migrate: the original's tutorial configs and train_protein_model migrate and train here with only the
changes the tool reports; original checkpoints convert into save_pretrained directories; bad inputs name the key."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file, save_file
from transformers import AutoModel

import cortex
from cortex.cli.migrate import main
from cortex.cli.train import run
from cortex.migration import compose_v1_config, migrate_v1_config
from cortex.model.conversion import convert_v1_checkpoint, convert_v1_state_dict

HERE = Path(__file__).parent
V1 = HERE / "v1_configs"
PARITY = HERE.parent / "parity"
RBD = HERE.parents[1] / "data" / "rbd_starr2020_bind_expr.csv.gz"
ORIGINALS = [
    (V1 / "tutorial" / "2_defining_a_task.yaml", []),
    (V1 / "tutorial" / "3_training_a_neural_tree.yaml", []),
    (V1 / "tutorial" / "4_guided_diffusion.yaml", []),
    # the original's own override syntax shrinks the model for a CPU test: `channel_dim=32`
    pytest.param(V1 / "hydra" / "train_protein_model.yaml", ["channel_dim=32"], marks=pytest.mark.slow),
]


def _bundled_table(path: Path, columns: list[str]) -> Path:
    """What a user supplies for a swapped data entry: bundled RBD rows under the columns the tasks read."""
    frame = pd.read_csv(RBD)
    frame = frame[~frame["sequence"].str.contains(r"\*")].iloc[:48]
    values = {"tokenized_seq": frame["sequence"], "partition": frame["site_spike"] % 2}
    numeric = [frame["expr_delta_meanF"], frame["bind_delta_log10Ka"]]
    table = {c: values[c] if c in values else numeric[i % 2] for i, c in enumerate(columns)}
    pd.DataFrame(table).to_csv(path, index=False)
    return path


def _apply_actions(result, tmp_path: Path) -> dict:
    """The only edits the user makes: one per [action] line (swap each data entry for a local table)."""
    config = result.config
    for entry in result.entries("action"):
        name = entry.new_key.split(".", 1)[1]
        columns = sorted(
            {c for t in config["tasks"].values() if t["data"] == name for c in _task_columns(t["task"])}
        )
        if "balance_by" in config["data"][name]:
            columns.append(config["data"][name]["balance_by"])
        source = _bundled_table(tmp_path / f"{name}.csv", columns)
        config["data"][name]["source"] = str(source)
        config["data"][name]["split"] = {
            "_target_": "cortex.data.RandomSplit",
            "fractions": {"train": 0.75, "test": 0.25},
        }
    return config


def _task_columns(task: dict) -> list[str]:
    return [*task["inputs"].values(), *task.get("targets", []), *([task["label"]] if "label" in task else [])]


@pytest.mark.parametrize(
    ("path", "overrides"), ORIGINALS, ids=["tutorial2", "tutorial3", "tutorial4", "train_protein_model"]
)
def test_original_config_migrates_and_trains_with_only_the_reported_changes(tmp_path, path, overrides):
    result = migrate_v1_config(compose_v1_config(path, overrides=overrides))
    actions = result.entries("action")
    assert actions and all(a.new_key.startswith("data.") for a in actions)
    assert {a.new_key for a in actions} == {f"data.{name}" for name in result.config["data"]}
    assert all(e.status in ("mapped", "changed", "unmapped", "action") for e in result.report)
    new = tmp_path / "migrated.yaml"
    new.write_text(yaml.safe_dump(_apply_actions(result, tmp_path)))
    GlobalHydra.instance().clear()
    run_length = [
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "datamodule.batch_size=4",
        "datamodule.eval_batch_size=4",
        "datamodule.num_workers=0",
    ]
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        cfg = compose("migrated", overrides=run_length)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "run")
        cfg.model_dir = str(tmp_path / "model")
    model_dir = run(cfg)
    model = AutoModel.from_pretrained(model_dir)
    assert set(model.config.leaves) == set(result.config["tasks"])


def test_tutorial_branch_with_zero_blocks_is_a_bias_free_linear_as_the_original():
    result = migrate_v1_config(compose_v1_config(V1 / "tutorial" / "3_training_a_neural_tree.yaml"))
    branch = result.config["branches"]["protein_property"]
    assert branch["num_blocks"] == 0 and branch["out_dim"] == 8
    report = {e.old_key: e for e in result.report}
    assert report["tree.fit_cfg.optimizer.lr"].new_key == "optim.lr"
    assert result.config["optim"]["lr"] == 5e-3 and result.config["optim"]["betas"] == [0.99, 0.999]
    assert result.config["optim"]["interval"] == "epoch" and result.config["seed"] == 42


def test_migrated_config_fixed_numerics_drops_the_original_flags():
    cfg = compose_v1_config(V1 / "hydra" / "train_protein_model.yaml")
    v1 = migrate_v1_config(cfg).config
    fixed = migrate_v1_config(cfg, numerics="fixed").config
    assert v1["roots"]["protein_seq"]["block"] == "cortex_v1"
    assert "block" not in fixed["roots"]["protein_seq"]
    assert v1["datamodule"]["pad_to_multiple_of"] == 256


def test_cli_config_writes_yaml_and_reports_every_key(tmp_path, capsys):
    out = tmp_path / "new.yaml"
    assert main(["config", str(V1 / "tutorial" / "4_guided_diffusion.yaml"), "-o", str(out)]) == 0
    written = OmegaConf.load(out)
    assert set(written.tasks) == {"log_fluorescence", "protein_seq"}
    err = capsys.readouterr().err
    assert "[action]" in err and "[unmapped] guidance_objective" in err and "[unmapped] num_steps" in err


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_cli_checkpoint_writes_a_loadable_directory_predicting_as_the_original(tmp_path, suffix):
    state_dict = load_file(PARITY / "tiny_tree_state_dict.safetensors")
    path = tmp_path / f"original{suffix}"
    if suffix == ".pt":
        torch.save(state_dict, path)
    else:
        save_file(state_dict, path)
    out = tmp_path / "converted"
    assert main(["checkpoint", str(path), str(PARITY / "tiny_tree_config.yaml"), str(out)]) == 0
    model = AutoModel.from_pretrained(out).eval()
    recorded = load_file(PARITY / "tiny_tree.safetensors")
    with torch.no_grad():
        output = model(input_ids=recorded["clean.root.tgt_tok_idxs"])
    torch.testing.assert_close(output.leaf_outputs["expr"].loc[0], recorded["clean.leaf.expr_0.loc"])


@pytest.fixture
def original():
    return load_file(PARITY / "tiny_tree_transformer_state_dict.safetensors"), OmegaConf.load(
        PARITY / "tiny_tree_transformer_config.yaml"
    )


def test_missing_key_is_named(original):
    state_dict, cfg = original
    del state_dict["root_nodes.protein_seq.encoder.1.ln_2.weight"]
    with pytest.raises(ValueError, match=r"missing key.*root_nodes\.protein_seq\.encoder\.1\.ln_2\.weight"):
        convert_v1_state_dict(state_dict, cfg)


def test_extra_key_is_named(original):
    state_dict, cfg = original
    state_dict["branch_nodes.protein_branch_1.encoder.0.ln_1.weight"] = torch.ones(32)
    with pytest.raises(ValueError, match=r"unexpected key.*branch_nodes\.protein_branch_1\.encoder\.0\.ln_1"):
        convert_v1_state_dict(state_dict, cfg)


def test_shape_mismatch_is_named(original):
    state_dict, cfg = original
    state_dict["leaf_nodes.expr_0.encoder.0.weight"] = torch.zeros(2, 16)
    with pytest.raises(ValueError, match=r"leaf_nodes\.expr_0\.encoder\.0\.weight.*\(2, 16\).*\(2, 32\)"):
        convert_v1_state_dict(state_dict, cfg)


def test_config_that_is_not_original_is_named(original, tmp_path):
    state_dict, _ = original
    with pytest.raises(ValueError, match="not an original cortex config: key 'roots'"):
        convert_v1_state_dict(state_dict, {"model": {}})
    ours = OmegaConf.load(Path(cortex.__file__).parent / "configs" / "train.yaml")
    ours.roots = {"protein": {"type": "conv1d", "max_length": 32}}
    ours.tasks = {}
    with pytest.raises(ValueError, match=r"roots\.protein has 'type' and no '_target_'"):
        convert_v1_state_dict(state_dict, ours)
    bad = OmegaConf.load(PARITY / "tiny_tree_transformer_config.yaml")
    bad.branches.protein_branch._target_ = "cortex.model.branch.MysteryBranch"
    with pytest.raises(ValueError, match=r"branches\.protein_branch\._target_"):
        convert_v1_state_dict(state_dict, bad)


def test_ensemble_members_stack_and_mixed_ensemble_sizes_split_the_branch(original):
    """Member i of the original is member i here; a task with a smaller ensemble in the same group keeps the
    original's shared instances 0..E-1 (copied into their own branch)."""
    state_dict, cfg = original
    for key in list(state_dict):
        for old, new in (
            ("branch_nodes.protein_branch_0.", "branch_nodes.protein_branch_1."),
            ("leaf_nodes.expr_0.", "leaf_nodes.expr_1."),
        ):
            if key.startswith(old):
                value = state_dict[key].clone()
                perturb = 0.01 * (value.dim() > 1 and "outcome_transform" not in key)
                state_dict[new + key[len(old) :]] = value + perturb
    cfg.tasks.protein_branch.expr.ensemble_size = 2
    model = convert_v1_checkpoint(state_dict, cfg)
    assert model.config.branches["protein_branch"]["ensemble_size"] == 2
    assert model.config.branches["protein_branch_ensemble1"]["ensemble_size"] == 1
    assert model.config.leaves["protein_seq"]["branch"] == "protein_branch_ensemble1"
    recorded = load_file(PARITY / "tiny_tree_transformer.safetensors")
    with torch.no_grad():
        output = model(input_ids=recorded["clean.root.tgt_tok_idxs"])
    loc = output.leaf_outputs["expr"].loc  # (2, B, 1)
    torch.testing.assert_close(loc[0], recorded["clean.leaf.expr_0.loc"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(loc[1], loc[0])
    torch.testing.assert_close(
        output.leaf_outputs["protein_seq"].logits[0],
        recorded["clean.leaf.protein_seq_0.logits"],
        atol=1e-5,
        rtol=1e-5,
    )
