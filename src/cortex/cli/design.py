"""`cortex-design`: LaMBO-2 guided design from a saved NeuralTree, configured with Hydra.

    cortex-design model_dir=runs/rbd/model seeds_csv=seeds.csv objective.leaves=[bind] num_steps=8
    cortex-design ... lambo.max_guidance_updates=0          # unguided infilling baseline
    cortex-design ... resume_from=outputs/<run>/state num_steps=4

Reads the seeds once, runs the sampler, and writes candidates.csv, history.csv, objective.png and the
resumable state into the run directory (configs/design/design.yaml lists every key).
"""

from __future__ import annotations

import logging
import os

import hydra
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from cortex.design.constraints import DesignConstraints
from cortex.design.lambo import LaMBO2, LaMBO2Config
from cortex.design.state import DesignState
from cortex.design.tree_objectives import AcquisitionObjective, LeafMean
from cortex.model.modeling_neural_tree import NeuralTreeModel

logger = logging.getLogger(__name__)
OBJECTIVE_KINDS: tuple[str, ...] = ("mean", "acquisition")


def build_objective(cfg: DictConfig):
    leaves = list(cfg.leaves) if not isinstance(cfg.leaves, str) else [cfg.leaves]
    if cfg.kind not in OBJECTIVE_KINDS:
        raise ValueError(f"objective.kind is {cfg.kind!r}; expected one of {OBJECTIVE_KINDS}")
    if cfg.kind == "mean":
        if len(leaves) != 1:
            raise ValueError(f"objective.kind=mean reads one leaf; objective.leaves is {leaves}")
        return LeafMean(leaves[0], target=int(cfg.target), sign=float(cfg.sign))
    return AcquisitionObjective(
        [(leaf, int(cfg.target)) for leaf in leaves],
        list(cfg.constraint_leaves),
        fit_scaling=bool(cfg.fit_scaling),
    )


def read_seeds(path: str, column: str, num_seeds: int | None) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"seeds_csv {path!r} does not exist; expected a CSV with a {column!r} column")
    frame = pd.read_csv(path)
    if column not in frame.columns:
        raise ValueError(f"seeds_csv {path!r} has no column {column!r}; columns are {list(frame.columns)}")
    seeds = frame[column].dropna().astype(str).tolist()
    return seeds[:num_seeds] if num_seeds is not None else seeds


def plot_history(history: pd.DataFrame, path: str) -> None:
    """PNG of the mean and best objective of the population at each step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = history.groupby("step")["objective"].agg(["mean", "max"])
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(summary.index, summary["mean"], marker="o", label="mean")
    axis.plot(summary.index, summary["max"], marker="s", label="best")
    axis.set_xlabel("LaMBO-2 step")
    axis.set_ylabel("objective")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_design(cfg: DictConfig) -> DesignState:
    model = NeuralTreeModel.from_pretrained(cfg.model_dir).to(torch.device(cfg.device)).eval()
    constraints_cfg = OmegaConf.to_container(cfg.constraints, resolve=True)
    constraints_cfg["allowed_tokens"] = {int(k): v for k, v in constraints_cfg["allowed_tokens"].items()}
    sampler = LaMBO2(
        model,
        build_objective(cfg.objective),
        DesignConstraints(**constraints_cfg),
        LaMBO2Config(**OmegaConf.to_container(cfg.lambo, resolve=True)),
    )
    if cfg.resume_from is not None:
        start = DesignState.load(cfg.resume_from, device=cfg.device)
    else:
        start = read_seeds(cfg.seeds_csv, cfg.seed_column, cfg.num_seeds)
    state = sampler.run(start, num_steps=int(cfg.num_steps))
    output_dir = cfg.output_dir
    os.makedirs(output_dir, exist_ok=True)
    history = state.history_frame()
    history.to_csv(os.path.join(output_dir, "history.csv"), index=False)
    final = history[history["step"] == state.step].drop(columns=["step", "score"])
    final.to_csv(os.path.join(output_dir, "candidates.csv"), index=False)
    plot_history(history, os.path.join(output_dir, "objective.png"))
    state.save(os.path.join(output_dir, "state"))
    logger.info("wrote %d candidates after %d steps to %s", len(final), state.step, output_dir)
    return state


@hydra.main(config_path="../configs/design", config_name="design", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_design(cfg)


if __name__ == "__main__":
    main()
