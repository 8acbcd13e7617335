"""Smoke run of `cortex-design` on a saved tiny tree and a seeds CSV, then a resumed run."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd


def test_cortex_design_writes_candidates_plot_and_resumes(tiny_model, rbd_seeds, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    pd.DataFrame({"sequence": rbd_seeds}).to_csv(tmp_path / "seeds.csv", index=False)
    common = [
        sys.executable, "-m", "cortex.cli.design",
        f"model_dir={tmp_path / 'model'}", f"seeds_csv={tmp_path / 'seeds.csv'}", "objective.leaves=[bind]",
        "lambo.max_guidance_updates=1", "lambo.kl_weight=0.25", "constraints.immutable_positions=[0,1]",
    ]  # fmt: skip
    subprocess.run([*common, "num_steps=2", f"hydra.run.dir={tmp_path / 'run'}"], check=True)
    candidates = pd.read_csv(tmp_path / "run" / "candidates.csv")
    assert list(candidates.columns) == [
        "candidate", "sequence", "objective", "accepted", "num_accepted", "edit_distance"
    ]  # fmt: skip
    assert len(candidates) == len(rbd_seeds)
    assert all(c[:2] == s[:2] for c, s in zip(candidates["sequence"], rbd_seeds))
    assert (tmp_path / "run" / "objective.png").read_bytes()[:4] == b"\x89PNG"
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert sorted(history["step"].unique()) == [0, 1, 2]

    resume = [
        f"resume_from={tmp_path / 'run' / 'state'}",
        "num_steps=1",
        f"hydra.run.dir={tmp_path / 'more'}",
    ]
    subprocess.run([*common, *resume], check=True)
    assert sorted(pd.read_csv(tmp_path / "more" / "history.csv")["step"].unique()) == [0, 1, 2, 3]


def test_cortex_design_names_a_missing_column(tiny_model, rbd_seeds, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    pd.DataFrame({"seq": rbd_seeds}).to_csv(tmp_path / "seeds.csv", index=False)
    result = subprocess.run(
        [
            sys.executable, "-m", "cortex.cli.design", f"model_dir={tmp_path / 'model'}",
            f"seeds_csv={tmp_path / 'seeds.csv'}", "objective.leaves=[bind]", f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "has no column 'sequence'" in result.stderr
