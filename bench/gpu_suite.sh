#!/usr/bin/env bash
# Runs every GPU benchmark in one call, on one CUDA device, writing results under $OUT (if set) or
# bench/results/. Usage: OUT=/some/dir bash bench/gpu_suite.sh   (from the repository root or anywhere).
# Each benchmark appends its own section below; a failing benchmark stops the suite (set -e) with its exit code.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
RESULTS="${OUT:-bench/results}"
mkdir -p "$RESULTS"
export PYTHONPATH="${PWD}/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'gpu_suite.sh needs a CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"

# torch.compile: eager vs compiled training steps/s, (a) property+generation trees, (b) 12x768 MFU.
"$PYTHON" bench/compile_speed.py --device cuda --precision bf16-mixed --out "$RESULTS/compile.json" \
  2>&1 | tee "$RESULTS/compile_speed.log"

# Training quality (issue 4): GFP TAPE-like test Spearman (target >= 0.68); RBD position-held-out two-task vs
# single-task vs one-hot ridge, ensemble of 4 (NLL, 90% coverage).
"$PYTHON" bench/train_gfp.py --accelerator gpu --precision bf16-mixed --max-epochs 20 --batch-size 128 \
  --output-dir /tmp/cortex-bench --out "$RESULTS/gfp.json" 2>&1 | tee "$RESULTS/train_gfp.log"
"$PYTHON" bench/train_rbd.py --accelerator gpu --precision bf16-mixed --max-epochs 30 \
  --output-dir /tmp/cortex-bench --out "$RESULTS/rbd.json" 2>&1 | tee "$RESULTS/train_rbd.log"
