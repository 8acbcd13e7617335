"""Every console script of the installed package starts through its entry point (the way users call it).

`python -m cortex.cli.design` and the `cortex-design` script resolve Hydra's config path differently (a file path
against a `pkg://` module): a config folder that is not a package worked through `-m` and failed as a script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

# pyproject.toml's [project.scripts], as installed (the distribution is pytorch-cortex, as the original's)
SCRIPTS = [e.name for e in distribution("pytorch-cortex").entry_points if e.group == "console_scripts"]


def _script(name: str) -> Path:
    """The installed script beside this interpreter (scripts/setup.sh installs the project into .venv)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        pytest.fail(f"console script {name!r} is not installed beside {sys.executable}; run scripts/setup.sh")
    return path


def test_every_documented_console_script_is_installed():
    assert set(SCRIPTS) >= {"cortex-train", "cortex-design", "cortex-predict", "cortex-embed", "cortex-bench",
                            "cortex-migrate"}  # fmt: skip
    assert all(_script(name) for name in SCRIPTS)


# The Hydra entry points: their config folders must resolve as packages (the argparse ones import the same modules
# that the rest of the suite tests).
HYDRA_SCRIPTS = ["cortex-bench", "cortex-design", "cortex-train"]


@pytest.mark.parametrize("name", HYDRA_SCRIPTS)
def test_hydra_console_script_prints_its_help(name, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(_script(name)), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{name} --help failed:\n{done.stderr[-2000:]}"
    assert done.stdout.strip(), f"{name} --help printed nothing"
