#!/usr/bin/env bash
# Source on the GPU machine (Python 3.12, torch/transformers/lightning/botorch installed, no network, no hydra,
# omegaconf or datasets) from the repository root, with ./.whl and ./.whl-v1 carried along:
#   .whl     this project's missing wheels, built here by ../shared/tools/device-wheels.sh
#   .whl-v1  the original cortex's wheels, from `scripts/v1-wheels.sh download` (only for bench/perf/run.py)
# Installs .whl into /tmp/site and exports PYTHONPATH=src:/tmp/site; unpacks .whl-v1 into .whl-v1/site (the
# original's PYTHONPATH, V1_SITE) without its numpy 1.26: the machine's scipy is built for numpy 2, so the original
# runs on numpy 2 with the few aliases it needs restored by a sitecustomize.py that only its process sees.
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD/src:/tmp/site"
if [ -d .whl-v1 ] && ls .whl-v1/*.whl >/dev/null 2>&1; then
  if [ ! -d .whl-v1/site ]; then
    bash scripts/v1-wheels.sh install .whl-v1 >/dev/null
    rm -rf .whl-v1/site/numpy .whl-v1/site/numpy-* .whl-v1/site/numpy.libs
    cat > .whl-v1/site/sitecustomize.py <<'PY'
# numpy 1.x names the original cortex (pytorch-cortex 0.0.4) and its pinned dependencies still use.
import numpy as np

for _old, _new in {"float_": "float64", "complex_": "complex128", "NaN": "nan", "Inf": "inf", "unicode_": "str_"}.items():
    if not hasattr(np, _old):
        setattr(np, _old, getattr(np, _new))
PY
  fi
  export V1_SITE="$PWD/.whl-v1/site"
fi
set +euo pipefail
