#!/usr/bin/env bash
# The tuning study's DMC case: cheetah-run with an initial action std of 1 (--init-log-std 0) and an
# entropy bonus (--ent-coef 0.01), against the same without the bonus (--ent-coef 0), 3 seeds each,
# as one `ppo sweep`; then `ppo diagnose` of both points, which must flag the rising action std
# (std_rising) on the first and not on the second.
#
#     bash benchmarks/dmc_study.sh            # STEPS=1000000 per job: about 40 minutes on 2 cores; resumes
#
# Needs the dmc extra (installed by make). Runs go to RUNS (default results/, not committed); the
# ranking (ranking.txt, sweep.csv), the figure of return, entropy and action std (study.png) and
# the diagnosis (diagnose.txt, diagnose.json, verdict.txt) go to benchmarks/results/dmc_study/.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-results}
PPO=${PPO:-.venv/bin/ppo}
STEPS=${STEPS:-1000000}
OUT=benchmarks/results/dmc_study
SWEEP=$RUNS/sweeps/dmc_study
mkdir -p "$OUT"
export COLUMNS=${COLUMNS:-120}
if [ -f "$SWEEP/sweep.json" ]; then
  $PPO sweep --resume "$SWEEP" --quiet
else
  $PPO sweep dmc:cheetah-run --grid ent_coef=0.01,0 --init-log-std 0 --seeds 3 --total-steps "$STEPS" \
    --name dmc_study --out "$RUNS" --quiet
fi 2>&1 | grep -v ": finished at step" | tee "$OUT/ranking.txt"
cp "$SWEEP/sweep.csv" "$OUT/"
$PPO plot "$SWEEP" --metrics episodic_return,entropy,action_std --out "$OUT/study.png" > /dev/null
COLUMNS=160 $PPO diagnose "$SWEEP" > "$OUT/diagnose.txt" 2>&1
$PPO diagnose "$SWEEP" --json > "$OUT/diagnose.json"
python3 - "$OUT/diagnose.json" <<'PY' | tee "$OUT/verdict.txt"
import json, sys
runs = {run["run"].rsplit("/", 1)[-1]: {f["rule"] for f in run["findings"]} for run in json.load(open(sys.argv[1]))["runs"]}
for point, expected in (("ent_coef=0.01", True), ("ent_coef=0", False)):
    found = "std_rising" in runs.get(point, set())
    print(f"{point}: std_rising {'found' if found else 'not found'} (expected {'found' if expected else 'not found'}): "
          f"{'ok' if found == expected else 'WRONG'}; rules: {', '.join(sorted(runs.get(point, []))) or 'none'}")
PY
