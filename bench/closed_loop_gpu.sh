#!/usr/bin/env bash
# Closed-loop protocol of issue 7 sized for one H200 with 16 CPU cores in under 9 minutes (the full bbo-bench
# protocol, 12 rounds of 2,000 proposals x 64 LaMBO steps x 5 seeds x 3 levels, does not fit in that time).
#
# Ehrlich easy and medium, LaMBO-2 (loop defaults: a fresh max-pooled surrogate each round, rank-transformed
# targets, a LaMBO-2 population of 4 x batch from the batch / 2 best sequences, 2 mutations per step, bigram
# screen) vs the genetic algorithm, 5 seeds, from the
# instance's 512-sequence DMP pool, rounds of 128, budget 512 + 12 x 128 = 2,048 evaluations. Every GA seed is
# its own CPU process; the LaMBO-2 seeds of a level run in LAMBO_PROCS GPU processes (default 1, seeds in turn);
# every process is stopped by SIGINT at DEADLINE_S; the loop state is saved atomically after every round,
# and the summary cuts every run at the fewest evaluations any run of that level reached, so the methods are
# compared at an equal budget whatever finished. Hydra must be installed (the lead carries its wheel).
#
#   bash bench/closed_loop_gpu.sh [OUT] [DEADLINE_S] [extra cortex-bench overrides...]
#   # CPU smoke test at a tiny size:
#   bash bench/closed_loop_gpu.sh /tmp/gpu_smoke 120 loop.device=cpu initial_size=32 loop.batch_size=16 \
#     loop.num_rounds=2 loop.lambo_steps=2 loop.min_train_steps=0 loop.num_epochs=1 seeds='[0]'
#
# Writes OUT/ehrlich.json (issue 7 keys, protocol recorded) and OUT/runs.tgz (every run's directory, whose state
# resumes the run, the per-level results and <level>_best_so_far.png): two files, as the device tool returns at
# most 8 (session 8: two jobs writing 4 files each lost the second's archive) and no deep folders. To continue
# stopped runs: tar xzf runs.tgz -C OUT, then the same command with the same OUT.
set -euo pipefail
OUT=${1:-${OUT:-bench/results/closed_loop_gpu}}
DEADLINE_S=${2:-450}
shift $(( $# > 2 ? 2 : $# ))
DEVICE=cuda
SEEDS=${SEEDS:-0 1 2 3 4}
LEVELS=${LEVELS:-easy medium}  # Ehrlich presets to run, e.g. LEVELS="medium hard"
THREADS=${THREADS:-1}  # torch threads a run (LaMBO-2 on the CPU, loop.device=cpu, wants several)
GA=${GA:-1}  # 0: LaMBO-2 only (another job on the same host runs the GA seeds)
EXTRA=()
for arg in "$@"; do
  case $arg in
    loop.device=*) DEVICE=${arg#loop.device=} ;;
    seeds=*) SEEDS=$(echo "${arg#seeds=}" | tr -d "[]'\"" | tr , ' ') ;;
    *) EXTRA+=("$arg") ;;
  esac
done
mkdir -p "$OUT/runs"
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"  # the repository tree travels, not an installed package
pids=()
LAMBO_PROCS=${LAMBO_PROCS:-1}  # LaMBO-2 processes per level sharing the GPU; each runs its share of SEEDS in turn
read -r -a seed_list <<< "$SEEDS"
for level in $LEVELS; do
  # GA: a CPU process per seed. LaMBO-2: LAMBO_PROCS GPU processes per level (session 4: 10 processes sharing one
  # H200 finished no round in 400 s, time-sliced contexts). Session 9 (bench/profile_round.py): one process alone
  # runs a medium round of 128 from the 512 pool in 23 s (16 s of it surrogate training, launch-bound); three
  # processes sharing the H200 took about 180 s a round each, so on one GPU keep LAMBO_PROCS=1 (seeds in turn).
  jobs=()
  if [[ $GA == 1 ]]; then for seed in "${seed_list[@]}"; do jobs+=("ga $seed"); done; fi
  for ((p = 0; p < LAMBO_PROCS; p++)); do
    group=()
    for ((i = p; i < ${#seed_list[@]}; i += LAMBO_PROCS)); do group+=("${seed_list[i]}"); done
    (( ${#group[@]} )) && jobs+=("lambo $(IFS=,; echo "${group[*]}")")
  done
  for job in "${jobs[@]}"; do
    read -r method seeds <<< "$job"
    device=cpu
    [[ $method == lambo ]] && device=$DEVICE
    dir="$OUT/runs/${level}_${method}_s${seeds//,/-}"
    timeout -s INT -k 20 "$DEADLINE_S" python -m cortex.cli.bench \
      problems="[$level]" methods="[$method]" seeds="[$seeds]" num_threads="$THREADS" num_workers=1 \
      initial_size=512 loop.batch_size=128 loop.num_rounds=12 \
      loop.feature_dim=64 loop.train_batch_size=128 \
      ${EXTRA[@]+"${EXTRA[@]}"} ++loop.device="$device" hydra.run.dir="$dir" \
      >"$dir.log" 2>&1 &
    pids+=($!)
  done
done
status=0
for pid in "${pids[@]}"; do
  # 124/130: stopped at the deadline (its saved rounds still count); anything else is a failure.
  wait "$pid" || { code=$?; [[ $code == 124 || $code == 130 ]] || { echo "run $pid failed ($code)"; status=1; }; }
done
for level in $LEVELS; do
  python bench/closed_loop_cpu.py --states "$OUT"/runs/${level}_* --started-only \
    --plot "$OUT/runs/${level}_best_so_far.png" --results-dir "$OUT/runs/$level" --write-results \
    --protocol "bench/closed_loop_gpu.sh on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo cpu): $level, LaMBO-2 on $DEVICE vs GA, seeds [$SEEDS], each run stopped at ${DEADLINE_S}s, runs that finished a round cut at the fewest evaluations reached; initial_size=512 loop.batch_size=128 loop.num_rounds=12 unless overridden; overrides: ${EXTRA[*]:-none}"
done
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
merged = {}
for level in ("easy", "medium", "hard"):
    path = out / "runs" / level / "ehrlich.json"
    if path.exists():
        merged.update(json.loads(path.read_text()))
(out / "ehrlich.json").write_text(json.dumps(merged, indent=2) + "\n")
print(json.dumps(merged, indent=2))
PY
tar czf "$OUT/runs.tgz" -C "$OUT" runs && rm -rf "$OUT/runs"
exit $status
