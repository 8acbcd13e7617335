"""`cortex-design` on a saved tiny tree and a seeds CSV: the real entry point in a subprocess once, then a resumed
run and a bad CSV through the same Hydra config composed in-process (a subprocess costs ~3 s CPU of imports)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

import cortex.cli.design
from cortex.cli.design import run_design

CONFIG_DIR = Path(cortex.cli.design.__file__).resolve().parents[1] / "configs" / "design"


def compose_design(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("design", overrides=overrides)


@pytest.fixture()
def design_inputs(tiny_model, rbd_seeds, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    pd.DataFrame({"sequence": rbd_seeds}).to_csv(tmp_path / "seeds.csv", index=False)
    return [
        f"model_dir={tmp_path / 'model'}", f"seeds_csv={tmp_path / 'seeds.csv'}", "objective.leaves=[bind]",
        "lambo.max_guidance_updates=1", "lambo.kl_weight=0.25", "constraints.immutable_positions=[0,1]",
    ]  # fmt: skip


def test_cortex_design_writes_candidates_plot_and_resumes(design_inputs, rbd_seeds, tmp_path):
    command = [sys.executable, "-m", "cortex.cli.design", *design_inputs]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, "num_steps=2", f"hydra.run.dir={tmp_path / 'run'}"], check=True, env=env)
    candidates = pd.read_csv(tmp_path / "run" / "candidates.csv")
    assert list(candidates.columns) == [
        "candidate", "sequence", "objective", "accepted", "num_accepted", "edit_distance"
    ]  # fmt: skip
    assert len(candidates) == len(rbd_seeds)
    assert all(c[:2] == s[:2] for c, s in zip(candidates["sequence"], rbd_seeds))
    assert (tmp_path / "run" / "objective.png").read_bytes()[:4] == b"\x89PNG"
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert sorted(history["step"].unique()) == [0, 1, 2]

    resume = [f"resume_from={tmp_path / 'run' / 'state'}", "num_steps=1", f"output_dir={tmp_path / 'more'}"]
    state = run_design(compose_design([*design_inputs, *resume]))
    assert state.step == 3
    resumed = pd.read_csv(tmp_path / "more" / "history.csv")
    assert sorted(resumed["step"].unique()) == [0, 1, 2, 3]
    # The resumed run continues the saved history, it does not restart from the seeds.
    pd.testing.assert_frame_equal(resumed[resumed["step"] <= 2].reset_index(drop=True), history)


def test_cortex_design_names_a_missing_column(tiny_model, rbd_seeds, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    pd.DataFrame({"seq": rbd_seeds}).to_csv(tmp_path / "seeds.csv", index=False)
    cfg = compose_design(
        [f"model_dir={tmp_path / 'model'}", f"seeds_csv={tmp_path / 'seeds.csv'}", "objective.leaves=[bind]",
         f"output_dir={tmp_path / 'run'}"]
    )  # fmt: skip
    with pytest.raises(ValueError, match="has no column 'sequence'; columns are \\['seq'\\]"):
        run_design(cfg)
