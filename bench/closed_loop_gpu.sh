#!/usr/bin/env bash
# Full closed-loop protocol of issue 7 (bbo-bench's "Generalists vs. Specialists" setting) for the GPU machine:
# 12 LaMBO-2 rounds of 2,000 proposals with 64 LaMBO steps per round, after a genetic-algorithm-presolved start
# (round 1 of every method is one GA generation from the 2,000-sequence DMP pool), 5 seeds, on Ehrlich
# easy / medium / hard and GB1, LaMBO-2 vs the genetic algorithm, unguided LaMBO-2 and random mutation.
# Budget per run: 2,000 (pool) + 13 x 2,000 = 28,000 evaluations, the same for every method.
# LaMBO-2 runs with the loop's defaults (1 mutation per LaMBO step, MLM leaf trained on feasible sequences,
# property leaves on clean inputs, bigram screen of proposals on Ehrlich, >= 150 optimizer steps per fit).
# Four runs at a time share the GPU (num_workers=4, 4 CPU threads each): the baselines are CPU-bound.
# Resumable: rerun the same command after an interruption. Then:
#   python bench/closed_loop_cpu.py --summary <out>/summary.json --write-results
set -euo pipefail
OUT=${1:-bench/results/closed_loop_gpu}
python -m cortex.cli.bench \
  problems='[easy,medium,hard]' methods='[lambo,ga,lambo_unguided,random]' seeds='[0,1,2,3,4]' \
  initial_size=2000 num_threads=4 num_workers=4 \
  loop.batch_size=2000 loop.num_rounds=13 loop.presolve_rounds=1 loop.lambo_steps=64 \
  loop.feature_dim=128 loop.ensemble_size=4 loop.num_epochs=16 loop.train_batch_size=256 \
  loop.max_guidance_updates=4 loop.device=cuda \
  hydra.run.dir="$OUT/ehrlich"
# GB1: 64 variants below wild type; 4 mutable sites leave 160,000 variants, so smaller batches.
python -m cortex.cli.bench \
  problems='[gb1]' methods='[lambo,ga,lambo_unguided,random]' seeds='[0,1,2,3,4]' \
  initial_size=64 num_threads=4 num_workers=4 \
  loop.batch_size=128 loop.num_rounds=12 loop.lambo_steps=64 loop.feature_dim=128 loop.num_epochs=16 \
  loop.device=cuda hydra.run.dir="$OUT/gb1"
