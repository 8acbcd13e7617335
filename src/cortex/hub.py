"""Sharing trees on the Hugging Face Hub: an auto-generated model card, remote code so that users without cortex
load the tree with `AutoModel.from_pretrained(repo, trust_remote_code=True)`, and `push_to_hub`.

Remote code: transformers copies the `auto_map` modules of a repository and their relative imports into its
module cache. `save_for_hub` writes the model-definition modules of cortex (config, model, nodes, layers, the
protein tokenizer, LoRA) as flat files whose `from cortex.x.y import` lines become `from .cortex_x_y import`,
and records `auto_map` in config.json. The files are the installed cortex source, so a Hub copy runs the
same code as the cortex version that saved it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

# cortex modules a saved tree needs, and their flat file names in the repository (without .py).
REMOTE_CODE_MODULES: dict[str, str] = {
    "cortex.model.configuration_neural_tree": "configuration_neural_tree",
    "cortex.model.modeling_neural_tree": "modeling_neural_tree",
    "cortex.model.roots": "cortex_model_roots",
    "cortex.model.trunks": "cortex_model_trunks",
    "cortex.model.branches": "cortex_model_branches",
    "cortex.model.leaves": "cortex_model_leaves",
    "cortex.model.layers": "cortex_model_layers",
    "cortex.data.tokenization": "cortex_data_tokenization",
    "cortex.peft": "cortex_peft",
}
# Both classes come from the modeling module: transformers copies each auto_map module with its relative imports
# into a folder named by their hash, so a config class taken from configuration_neural_tree.py would be a second
# copy of the module, and its node dataclasses would fail the model's isinstance checks.
AUTO_MAP: dict[str, str] = {
    "AutoConfig": "modeling_neural_tree.NeuralTreeConfig",
    "AutoModel": "modeling_neural_tree.NeuralTreeModel",
}
_CORTEX_IMPORT = re.compile(r"^(\s*)from (cortex(?:\.\w+)*) import", flags=re.MULTILINE)


def write_remote_code(directory: str | os.PathLike) -> list[str]:
    """Writes the flat remote-code modules into `directory`; returns their file names. ValueError when a
    module imports a cortex module outside REMOTE_CODE_MODULES (the copy would not load without cortex)."""
    written = []
    for module, flat in REMOTE_CODE_MODULES.items():
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ValueError(f"cannot find the source of {module!r}; expected an installed cortex")
        with open(spec.origin, encoding="utf-8") as handle:
            source = handle.read()

        def relative(match: re.Match, module: str = module) -> str:
            target = match.group(2)
            if target not in REMOTE_CODE_MODULES:
                raise ValueError(
                    f"{module} imports {target!r}, which is not bundled as remote code; add it to "
                    "cortex.hub.REMOTE_CODE_MODULES"
                )
            return f"{match.group(1)}from .{REMOTE_CODE_MODULES[target]} import"

        name = f"{flat}.py"
        with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
            handle.write(_CORTEX_IMPORT.sub(relative, source))
        written.append(name)
    return written


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _node_summary(node: Mapping[str, Any], skip: Sequence[str] = ("type", "hf_config")) -> str:
    return ", ".join(f"{k}={v}" for k, v in node.items() if k not in skip and v is not None) or "-"


def model_card(
    model: Any,
    *,
    repo_id: str | None = None,
    tasks: Sequence[Any] = (),
    training_data: str | Sequence[str] | None = None,
    metrics: Mapping[str, float] | None = None,
    license: str = "apache-2.0",
    description: str | None = None,
) -> str:
    """README.md text for a tree: YAML metadata, then roots, trunk, branches and leaves (from the config),
    the tasks that trained each leaf, the training data, metrics (name -> value), and usage examples."""
    config = model.config
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    tags = ["cortex", "neural-tree", "protein", "biology"]
    lora = dict(getattr(config, "lora_adapters", None) or {})
    if lora:
        tags.append("lora")
    front = ["---", "library_name: cortex", f"license: {license}", "tags:"] + [f"- {t}" for t in tags]
    if metrics:
        front += ["model-index:", f"- name: {repo_id or 'cortex-neural-tree'}", "  results:", "  - task:",
                  "      type: protein-property-prediction", "    metrics:"]  # fmt: skip
        for name, value in metrics.items():
            front += [f"    - name: {name}", f"      type: {name}", f"      value: {float(value):.6g}"]
    front.append("---")
    title = repo_id or "cortex NeuralTree"
    root_rows = []
    for name, node in config.roots.items():
        kind = node["type"] if node["type"] != "hf" else f"hf ({node['hf_config'].get('model_type')})"
        detail = _node_summary(node)
        if name in lora:
            detail += f"; LoRA r={lora[name]['r']} on {lora[name]['target_modules']}"
        root_rows.append((name, kind, detail))
    leaf_tasks = {task.leaf: task for task in tasks}
    leaf_rows = [
        (
            name,
            node["type"],
            node["branch"],
            _node_summary(node, ("type", "branch")),
            f"{leaf_tasks[name].name}: {', '.join(leaf_tasks[name].label_columns) or 'sequence'}"
            if name in leaf_tasks
            else "-",
        )
        for name, node in config.leaves.items()
    ]
    sections = [
        "\n".join(front),
        f"# {title}",
        description
        or "A multi-task NeuralTree (roots -> trunk -> branches -> leaves) built with "
        "[cortex](https://github.com/prescient-design/cortex).",
        f"Parameters: {total:,} ({trainable:,} trainable).",
        "## Roots\n\n" + _markdown_table(["root", "type", "settings"], root_rows),
        f"## Trunk\n\n{config.trunk['type']} of roots {config.trunk['roots']}",
        "## Branches\n\n"
        + _markdown_table(
            ["branch", "type", "settings"],
            [(n, b["type"], _node_summary(b)) for n, b in config.branches.items()],
        ),
        "## Leaves and tasks\n\n"
        + _markdown_table(["leaf", "type", "branch", "settings", "task: labels"], leaf_rows),
    ]
    if training_data:
        data = [training_data] if isinstance(training_data, str) else list(training_data)
        sections.append("## Training data\n\n" + "\n".join(f"- {d}" for d in data))
    if metrics:
        sections.append(
            "## Metrics\n\n"
            + _markdown_table(["metric", "value"], [(k, f"{float(v):.4g}") for k, v in metrics.items()])
        )
    repo = repo_id or "path/to/this/model"
    sections.append(
        "## Usage\n\n"
        "With cortex installed (`pip install pytorch-cortex`):\n\n```python\n"
        f'import cortex\nfrom cortex.model import NeuralTreeModel\n\nmodel = NeuralTreeModel.from_pretrained("{repo}")\n'
        "```\n\n```bash\n"
        f"cortex-predict {repo} sequences.fasta predictions.parquet\n```\n\n"
        "Without cortex (remote code shipped in this repository):\n\n```python\n"
        f'from transformers import AutoModel\n\nmodel = AutoModel.from_pretrained("{repo}", trust_remote_code=True)\n'
        "```"
    )
    return "\n\n".join(sections) + "\n"


def save_for_hub(model: Any, directory: str | os.PathLike, *, remote_code: bool = True, **card: Any) -> str:
    """`save_pretrained(directory)` plus README.md (`model_card(model, **card)`) and, with remote_code, the
    flat cortex modules and `auto_map` in config.json. Returns the directory."""
    directory = os.fspath(directory)
    model.save_pretrained(directory)
    if remote_code:
        write_remote_code(directory)
        path = os.path.join(directory, "config.json")
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        config["auto_map"] = dict(AUTO_MAP)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")
    with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(model_card(model, **card))
    return directory


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload cortex NeuralTree",
    endpoint: str | None = None,
    remote_code: bool = True,
    **card: Any,
) -> Any:
    """Creates `repo_id` (if needed) and uploads the tree, its tokenizers, README.md model card and remote code
    in one commit. Returns huggingface_hub's CommitInfo. `endpoint`: a Hub URL (default: HF_ENDPOINT)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as directory:
        save_for_hub(model, directory, remote_code=remote_code, repo_id=repo_id, **card)
        return api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message=commit_message)


__all__ = [
    "AUTO_MAP",
    "REMOTE_CODE_MODULES",
    "model_card",
    "push_to_hub",
    "save_for_hub",
    "write_remote_code",
]
