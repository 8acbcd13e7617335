"""The README's Python examples run as written (in order, sharing one namespace, in a scratch directory)."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) >= 2, "the README lost its Python examples"
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "rbd-tree" / "model.safetensors").is_file()
    assert (tmp_path / "design-state").is_dir()
    assert len(namespace["history"]) > 0
