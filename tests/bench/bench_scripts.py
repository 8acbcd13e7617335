"""Imports a script of bench/ (not a package) as a module, with its folder on sys.path while it loads so that
its imports of sibling scripts resolve."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(folder: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{folder.name}_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(folder))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module
