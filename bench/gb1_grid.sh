#!/usr/bin/env bash
# GB1 closed loop (issue 7) at many seeds on a many-core machine, every arm side by side in one job: the lent GPU
# host's 16 CPU cores ran 2 LaMBO-2 arms x 20 seeds to at least 2 rounds each in 525 s (CPU, 1 thread a run, 8
# workers an arm; GB1's surrogate is tiny, so a run is CPU-bound). The protocol is the recorded one: 64 variants below wild type drawn by the seed,
# 4 rounds of 32 = 192 evaluations.
#
#   bash bench/gb1_grid.sh OUT DEADLINE_S SEEDS ARM [ARM ...]
#   # ARM is name=override,override (cortex-bench overrides; name= alone: the loop defaults), e.g.
#   WORKERS=8 ROUNDS=2 bash bench/gb1_grid.sh $OUT 460 0,1,2 defaults= pool=loop.mlm_seed_pool_only=true
#   # CPU smoke test: WORKERS=1 ROUNDS=1 bash bench/gb1_grid.sh /tmp/gb1_smoke 120 0 tiny=loop.lambo_steps=1
#
# The GA runs the same seeds after them (seconds). Every LaMBO-2 arm is stopped by SIGINT at DEADLINE_S (its
# saved rounds still count). Writes OUT/<arm>/gb1.json (the arm against the GA, issue 7 keys, from the saved run
# states) and OUT/<arm>.tgz, OUT/ga.tgz (the runs' states and logs; the device tool returns at most 8 files, 16 MiB
# each, two folders down, so keep to 3 arms). To summarise here: tar xzf each into D, then
# python bench/closed_loop_cpu.py --states D/<arm> D/ga --write-results --results-dir <dir>.
set -euo pipefail
OUT=$1
DEADLINE_S=$2
SEEDS=$3
shift 3
WORKERS=${WORKERS:-8}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT/runs"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
ROUNDS=${ROUNDS:-4}  # rounds of 32 after the 64 starting variants (4: the recorded 192-evaluation protocol)
common=(problems="[gb1]" seeds="[$SEEDS]" num_threads=1 num_workers="$WORKERS" loop.batch_size=32 loop.num_rounds="$ROUNDS")
pids=()
names=()
for arm in "$@"; do
  name=${arm%%=*}
  names+=("$name")
  overrides=${arm#*=}
  IFS=, read -r -a extra <<< "$overrides"
  timeout -s INT -k 20 "$DEADLINE_S" "$PYTHON" -m cortex.cli.bench methods="[lambo]" "${common[@]}" \
    ${extra[@]+"${extra[@]}"} hydra.run.dir="$OUT/runs/$name" >"$OUT/runs/$name.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || { code=$?; [[ $code == 124 || $code == 130 ]] || { echo "run $pid failed ($code)"; status=1; }; }
done
"$PYTHON" -m cortex.cli.bench methods="[ga]" "${common[@]}" hydra.run.dir="$OUT/runs/ga" >"$OUT/runs/ga.log" 2>&1 ||
  status=1
# First, an archive a run (its states and log): the states come back even if the summaries below run out of time,
# and each archive stays under the device tool's 16 MiB a file (one archive of 60 runs did not).
for name in ga "${names[@]}"; do
  tar czf "$OUT/$name.tgz" -C "$OUT/runs" "$name" "$name.log"
done
for arm in "$@"; do
  name=${arm%%=*}
  "$PYTHON" bench/closed_loop_cpu.py --states "$OUT/runs/$name" "$OUT/runs/ga" --write-results \
    --results-dir "$OUT/$name" >/dev/null || status=1
  echo "$name: $(cat "$OUT/$name/gb1.json")"
done
rm -rf "$OUT/runs"
exit $status
