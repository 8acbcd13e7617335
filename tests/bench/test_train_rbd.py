"""bench/train_rbd.py's model selection: layouts are chosen on validation Spearman only, the chosen layouts are
the ones carried to the remaining seeds, finished runs are reused, and the previous headline is kept. The end to
end test trains tiny trees on a real slice of the RBD table (2 rows per site, so the site-held-out split keeps
every site)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from bench_scripts import load_script

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def _load(name: str):
    return load_script(BENCH, name)


train_rbd = _load("train_rbd")

TINY = [
    "roots.protein.embed_dim=8",
    "roots.protein.channel_dim=8",
    "roots.protein.out_dim=8",
    "roots.protein.num_blocks=1",
    "branches.property.out_dim=8",
    "callbacks.checkpoint=null",
]


def test_choose_takes_the_best_mean_counts_nan_as_zero_and_breaks_ties_by_order() -> None:
    assert train_rbd.choose({"a": [0.1, 0.3], "b": [0.3, 0.05], "c": [0.3, -0.1]}) == "a"
    assert train_rbd.choose({"a": [float("nan"), 0.08], "b": [0.05, 0.05]}) == "b"
    assert train_rbd.choose({"a": [0.2], "b": [0.2]}) == "a"
    with pytest.raises(ValueError, match="no layouts"):
        train_rbd.choose({})
    with pytest.raises(ValueError, match="'a' has no scores"):
        train_rbd.choose({"a": []})


def test_paired_difference() -> None:
    result = train_rbd.paired([0.3, 0.1, 0.2], [0.1, 0.2, 0.2])
    assert result["mean"] == pytest.approx(0.1 / 3)
    assert result["stderr"] == pytest.approx(
        math.sqrt(((0.2 - 0.1 / 3) ** 2 + (0.1 + 0.1 / 3) ** 2 + (0.1 / 3) ** 2) / 2 / 3)
    )
    assert result["seeds_at_least"] == 2


def test_bad_layouts_file_and_arguments_are_named(tmp_path: Path) -> None:
    path = tmp_path / "layouts.json"
    path.write_text(json.dumps({"two_task": {"a": []}}))
    with pytest.raises(ValueError, match=r"layouts\.json: top level \['two_task'\]"):
        train_rbd.load_layouts(path)
    path.write_text(json.dumps({"two_task": {"a": "pooling=max"}, "single_task": {"b": []}}))
    with pytest.raises(ValueError, match=re.escape("two_task.a is 'pooling=max'; expected a list")):
        train_rbd.load_layouts(path)
    with pytest.raises(ValueError, match=re.escape("--selection-seeds=3; expected 1..--seeds")):
        train_rbd.parse_args(["--seeds", "2", "--selection-seeds", "3"])
    with pytest.raises(ValueError, match=r"--two-task-overrides=.*with --select"):
        train_rbd.parse_args(["--select", "--two-task-overrides", "seed=1"])


@pytest.fixture(scope="module")
def rbd_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frame = pd.read_csv(REPO / "data" / "rbd_starr2020_bind_expr.csv.gz")
    frame = frame[~frame["sequence"].str.contains("*", regex=False)]
    path = tmp_path_factory.mktemp("data") / "rbd_slice.csv"
    frame.groupby("site_spike").head(2).to_csv(path, index=False)
    return path


def test_selection_end_to_end_on_validation_with_reuse_and_history(rbd_slice: Path, tmp_path: Path) -> None:
    layouts = {
        "two_task": {
            "mean_shared": ["branches.property.pooling=mean"],
            "max_per_task": [
                "branches.property.pooling=max",
                "+branches.expr=${branches.property}",
                "tasks.rbd_expr.leaf.branch=expr",
            ],
        },
        "single_task": {"mean": ["branches.property.pooling=mean"], "max": ["branches.property.pooling=max"]},
    }
    (tmp_path / "layouts.json").write_text(json.dumps(layouts))
    out = tmp_path / "rbd.json"
    previous = {"bind_spearman": 0.19, "label": "old", "variants": {"older": {"bind_spearman": 0.03}}}
    out.write_text(json.dumps(previous))
    argv = [
        "--select",
        "--layouts",
        str(tmp_path / "layouts.json"),
        "--seeds",
        "2",
        "--selection-seeds",
        "1",
        "--max-epochs",
        "1",
        "--ensemble-size",
        "2",
        "--num-threads",
        "1",
        "--batch-size",
        "64",
        "--data",
        str(rbd_slice),
        "--output-dir",
        str(tmp_path / "runs"),
        "--out",
        str(out),
        "--reuse",
        "--label",
        "new",
        *TINY,
    ]
    results = train_rbd.main(argv)

    required = {"bind_spearman", "expr_spearman", "ridge_bind_spearman", "ridge_expr_spearman"}
    required |= {"single_task_bind_spearman", "single_task_expr_spearman", "ensemble_nll", "coverage_90"}
    assert required <= set(results)
    assert results["variants"] == {"older": {"bind_spearman": 0.03}, "old": {"bind_spearman": 0.19}}
    selection = results["selection"]
    for tree, side in [("two_task", "two_task"), ("rbd_bind", "single_task"), ("rbd_expr", "single_task")]:
        scores = selection[tree]["validation_spearman"]
        assert set(scores) == set(layouts[side])
        # The choice is the argmax of the validation scores, whatever the test scores say.
        best = max(scores, key=lambda name: scores[name]["score"])
        assert selection[tree]["chosen"] == results["layout"][tree] == best
        # Only the chosen layout was trained on the seed after the selection seeds.
        trained = {p.parent.parent.name for p in (tmp_path / "runs" / tree).glob("*/seed1/result.json")}
        assert trained == {best}
    two_task = selection["two_task"]["validation_spearman"][results["layout"]["two_task"]]
    expected = (train_rbd.finite(two_task["rbd_bind"][0]) + train_rbd.finite(two_task["rbd_expr"][0])) / 2
    assert two_task["score"] == pytest.approx(expected)
    assert len(results["per_seed"]["bind_spearman"]) == 2
    assert results["bind_spearman"] == pytest.approx(sum(results["per_seed"]["bind_spearman"]) / 2)
    assert results["target_met"]["two_task_at_least_single_task"] == (
        results["bind_spearman"] >= results["single_task_bind_spearman"]
        and results["expr_spearman"] >= results["single_task_expr_spearman"]
    )
    assert json.loads(out.read_text())["layout"] == results["layout"]

    # A second invocation reuses every finished run: same numbers, no result file rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("**/result.json")}
    again = train_rbd.main(argv)
    assert again["per_seed"] == results["per_seed"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert again["variants"]["new"]["layout"] == results["layout"]


def test_every_default_layout_builds_a_different_tree(tmp_path: Path) -> None:
    from cortex.cli.train import build

    train_common = _load("train_common")
    args = train_rbd.parse_args(["--select", "--output-dir", str(tmp_path)])
    sequences = pd.read_csv(REPO / "data" / "rbd_starr2020_bind_expr.csv.gz", nrows=3)["sequence"].tolist()
    for side, layouts in train_rbd.LAYOUTS.items():
        predictions = {}
        for name, layout in layouts.items():
            target = None if side == "two_task" else "rbd_expr"
            cfg = train_common.compose_config(
                name, args, train_rbd.tree_overrides(args, side, layout, target)
            )
            torch.manual_seed(0)
            system, _, _ = build(cfg)
            model = system.model.eval()
            assert all(
                branch["ensemble_size"] == args.ensemble_size for branch in model.config.branches.values()
            )
            assert {leaf["branch"] for leaf in model.config.leaves.values()} == (
                {"property", "expr"} if name == "max_branch_per_task" else {"property"}
            ), (side, name)
            encoded = model.get_tokenizer("protein")(sequences, return_tensors="pt")
            inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
            with torch.no_grad():
                predictions[name] = (
                    model({"protein": inputs}, leaves=["rbd_expr"]).leaf_outputs["rbd_expr"].loc
                )
        # Same init seed, so equal predictions would mean an override that changes nothing (a wasted candidate).
        names = list(predictions)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                assert not torch.allclose(predictions[first], predictions[second]), (side, first, second)
