"""Makes tests/model/model_trees.py (tiny real trees shared by these tests) importable under importlib mode."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
