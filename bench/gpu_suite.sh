#!/usr/bin/env bash
# The GPU benchmarks, in the order a 30-minute device session should spend its time, each section time-boxed so a
# failure or a slow section does not take the rest down (each writes its own JSON/log under $OUT, or
# bench/results/gpu/ without it). On the lent GPU machine, from the repository root, with ./.whl (and ./.whl-v1
# for the original) carried along:
#   source bench/device_env.sh && OUT=$OUT bash bench/gpu_suite.sh [sections...]
# Sections: perf128 and perf512 (issue 8, side by side with the original, one width each, merged afterwards by
# bench/perf/run.py --merge; needs 2 GPUs for DDP), hostprof (cProfile of our host time a step, w128, CUDA graphs), lambo (issue 6 GPU step),
# fsdp (issue 11), gfp and rbd (issue 4), closed_loop (issue 7). Default: all, in that order.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
RESULTS="${OUT:-bench/results/gpu}"
mkdir -p "$RESULTS"
export PYTHONPATH="${PWD}/src${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'gpu_suite.sh needs a CUDA device'; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.device_count())" || exit 1
# bench/closed_loop_gpu.sh calls `python`; the GPU machine has only python3 on its PATH.
# A wrapper, not a symlink: a virtual environment's interpreter reached through a symlink outside the environment
# does not find its pyvenv.cfg, so it starts without the environment's packages (the session-3 closed loop failed so).
command -v python >/dev/null || { mkdir -p /tmp/cortex-bin
  printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/cortex-bin/python; chmod +x /tmp/cortex-bin/python
  export PATH="/tmp/cortex-bin:$PATH"; }
SECTIONS=("${@:-stepgraph perf128 perf512 lambo fsdp gfp rbd closed_loop}")
run() {  # run NAME SECONDS COMMAND...: time-boxed, logged, its exit status reported
  local name=$1 seconds=$2; shift 2
  timeout "$seconds" "$@" > "$RESULTS/$name.log" 2>&1
  echo "$name: exit $? (log $RESULTS/$name.log)"
}
for section in ${SECTIONS[@]}; do
  case $section in
    perf128|perf512) run "$section" 560 "$PYTHON" bench/perf/run.py --original-python "$(command -v "$PYTHON")" \
            --original-pythonpath "${V1_SITE:-.whl-v1/site}" --ours-pythonpath "$PYTHONPATH" --device cuda \
            --workloads a --roots conv1d --widths "${section#perf}" --compile-modes default,reduce-overhead \
            --step-graph-modes eager,default --timeout 200 --out "$RESULTS/$section.json" ;;
    hostprof) run hostprof 240 "$PYTHON" bench/perf/ours_driver.py train --device cuda --root conv1d --width 128 \
                --rows 32768 --num-workers 6 --warmup-steps 15 --measure-steps 200 --profile-steps 0 --compile \
                --step-graph --cprofile "$RESULTS/cprofile_ours_w128_step_graph_default.txt" \
                --out "$RESULTS/hostprof_w128_step_graph_default.json" ;;
    stepgraph) run stepgraph 200 "$PYTHON" -m pytest -q -p no:cacheprovider tests/training/test_step_graph.py
               run step_graph_memory 120 "$PYTHON" bench/step_graph_memory.py --width 128 \
                   --out "$RESULTS/step_graph_memory_w128.json" ;;
    lambo) run lambo 90 "$PYTHON" bench/lambo_speed.py --device cuda --population 128 --steps 3 \
             --output "$RESULTS/lambo_speed.json" ;;
    fsdp) run fsdp 120 "$PYTHON" bench/fsdp_smoke.py --devices 2 --steps 20 ;;
    gfp) run gfp 420 "$PYTHON" bench/train_gfp.py --accelerator gpu --max-epochs 15 --max-minutes 5.5 \
           --num-threads 4 --out "$RESULTS/gfp.json" --output-dir /tmp/cortex-bench/gfp ;;
    rbd) run rbd 420 "$PYTHON" bench/train_rbd.py --accelerator gpu --max-epochs 30 --seeds 5 --ensemble-size 4 \
           --num-threads 2 --parallel --workers 8 --max-minutes 2.5 --out "$RESULTS/rbd.json" \
           --output-dir /tmp/cortex-bench/rbd ;;
    closed_loop) run closed_loop 560 bash bench/closed_loop_gpu.sh "$RESULTS/closed_loop" 420 ;;
    *) echo "unknown section $section; expected perf128 perf512 hostprof stepgraph lambo fsdp gfp rbd closed_loop" >&2
       exit 2 ;;
  esac
done
# The per-width jobs of issue 8 merged into one perf.json (and its table), as BENCHMARKS.md records them.
if [ -f "$RESULTS/perf128.json" ] && [ -f "$RESULTS/perf512.json" ]; then
  "$PYTHON" bench/perf/run.py --merge "$RESULTS/perf128.json" "$RESULTS/perf512.json" \
    bench/results/perf_gpu/c_design_cpu.json --device cuda --out "$RESULTS/perf.json" > "$RESULTS/perf_merge.log" 2>&1
  echo "perf merge: exit $? ($RESULTS/perf.json)"
fi
