#!/usr/bin/env bash
# Creates .venv/ at the repository root with cortex installed in editable mode (console scripts included).
# Usage: bash scripts/setup.sh        (idempotent; a second run only checks what is installed)
# torch is installed first and pinned to the CPU build that lies on local disk, so that the open range in
# pyproject.toml never pulls a CUDA build; constraints.txt pins the rest to the versions CI tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${CORTEX_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import cortex, torch, transformers; print('cortex', cortex.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
