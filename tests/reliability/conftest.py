"""Reliability suite set-up: `reliability_helpers` importable by the test files, and the fuzz-case totals
written to the JSON file named by CORTEX_RELIABILITY_COUNTS at the end of the session (read by
bench/reliability_faults.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "training"))

from reliability_helpers import CASES


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("CORTEX_RELIABILITY_COUNTS")
    if path:
        with open(path, "w") as handle:
            json.dump({"cases": dict(CASES), "total": sum(CASES.values())}, handle, indent=1)
