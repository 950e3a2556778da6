#!/usr/bin/env bash
# The tuning study's own sweep: the KL early stop's target_kl 0.01 / 0.03 / 0.07, 3 seeds each, on
# HalfCheetah, Hopper and Walker2d (v5, ppo's default config), 27 jobs in one command.
#
#     bash benchmarks/sweep_kl.sh            # STEPS=300000 per job: about 40 minutes on 2 cores; resumes
#
# The study trained 1000 iterations of 2048 steps (2M) per run; 2 cores cannot, so this is 300k.
# Runs go to RUNS (default results/, not committed); the ranking (ranking.txt, sweep.csv), the figure
# (sweep.png) and `ppo diagnose` of every point (diagnose.txt) go to benchmarks/results/sweep_kl/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-results}
PPO=${PPO:-.venv/bin/ppo}
STEPS=${STEPS:-300000}
OUT=benchmarks/results/sweep_kl
SWEEP=$RUNS/sweeps/kl
mkdir -p "$OUT"
export COLUMNS=${COLUMNS:-120}
if [ -f "$SWEEP/sweep.json" ]; then
  $PPO sweep --resume "$SWEEP" --quiet
else
  $PPO sweep halfcheetah,hopper,walker2d --grid target_kl=0.01,0.03,0.07 --seeds 3 --total-steps "$STEPS" \
    --name kl --out "$RUNS" --quiet
fi 2>&1 | grep -v "^results.*: finished" | tee "$OUT/ranking.txt"
cp "$SWEEP/sweep.csv" "$SWEEP/sweep.png" "$OUT/"
COLUMNS=160 $PPO diagnose "$SWEEP" > "$OUT/diagnose.txt" 2>&1
