#!/usr/bin/env bash
# Real runs that produce each symptom `ppo diagnose` reads, on purpose, and healthy runs that must
# produce none; then `ppo diagnose` on each and a table: case x expected finding x found.
#
#     bash benchmarks/diagnose_cases.sh            # about 50 minutes on 2 cores; resumes where it stopped
#     STEPS=50000 bash benchmarks/diagnose_cases.sh /tmp/cases   # a quick look
#     ONLY="dmc-entropy-bonus dmc-no-bonus" bash benchmarks/diagnose_cases.sh   # train and read only these
#
# Every case is 2 seeds (trained side by side) of STEPS steps (default 200k; the 1M-frame DMC cases
# set their own). Runs go to RUNS
# (default results/diagnose_cases, not committed); each case's `ppo diagnose --json` output and
# `--plot` figure, and the table (cases.txt), go to benchmarks/results/diagnose/ (committed). With
# ONLY, the other cases are neither trained nor read again: the table takes their committed output.
# The DMC cases (the dmc extra): the tuning study's cheetah-run with and without the bonus, and two
# healthy runs at the DMC benchmark's budget (1M frames) with the best measured config.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-results/diagnose_cases}
OUT=benchmarks/results/diagnose
PPO=${PPO:-.venv/bin/ppo}
STEPS=${STEPS:-200000}
mkdir -p "$RUNS" "$OUT"

# name | expected rules (any one of them counts as found; RULE:SEVERITY only at that severity; "healthy": no
# problem and no warning) | ppo train arguments
CASES=(
  "healthy-hopper|healthy|hopper"
  "healthy-halfcheetah|healthy|halfcheetah"
  "healthy-walker2d|healthy|walker2d --preset tuned"
  "lr-too-high|kl_high kl_spike clipfrac_high|hopper --lr 3e-3 --update-epochs 30"
  "entropy-bonus|std_rising|halfcheetah --ent-coef 0.05 --init-log-std 0"
  "no-reward-norm|vloss_rise vloss_explode critic|halfcheetah --no-norm-reward"
  "tiny-rollouts|kl_high kl_spike critic|hopper --num-envs 1 --num-steps 16 --num-minibatches 2"
  "tight-kl-limit|cut_short|hopper --target-kl 0.002"
  "no-critic|critic|hopper --vf-coef 0"
  "diverging|non_finite|hopper --lr 3"
  "short-run|few_episodes|halfcheetah --total-steps 20480"
  "dmc-entropy-bonus|std_rising|dmc:cheetah-run --ent-coef 0.01 --init-log-std 0"
  "dmc-no-bonus|healthy|dmc:cheetah-run --ent-coef 0 --init-log-std 0"
  "healthy-dmc-walker-walk|healthy|dmc:walker-walk --total-steps 1000000"
  "healthy-dmc-walker-run|healthy|dmc:walker-run --preset tuned --total-steps 1000000"
  "dmc-spike-then-collapse|kl_spike:warning|dmc:cartpole-swingup --preset tuned --total-steps 1000000"
)
ONLY=${ONLY:-}

for line in "${CASES[@]}"; do
  IFS="|" read -r name expected args <<< "$line"
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  run=$(ls -d "$RUNS/$name"/*/run 2>/dev/null | head -1 || true)
  if [ -n "$run" ]; then
    echo "== $name: resume $run"
    $PPO train --resume "$run" --quiet > "$RUNS/$name.log" 2>&1 || true
  else
    echo "== $name: ppo train --seeds 2 --total-steps $STEPS $args"
    # shellcheck disable=SC2086
    $PPO train --seeds 2 --jobs 2 --total-steps "$STEPS" $args --out "$RUNS/$name" --run-name run --quiet \
      > "$RUNS/$name.log" 2>&1 || true
  fi
  $PPO diagnose "$RUNS/$name" --json > "$OUT/$name.json"
  $PPO diagnose "$RUNS/$name" --plot --out "$OUT/$name.png" > /dev/null
done

python3 - "$OUT" "${CASES[@]}" <<'EOF' | tee "$OUT/cases.txt"
import json, sys
from pathlib import Path

out, cases = Path(sys.argv[1]), sys.argv[2:]
print(f"{'case':<22} {'expected':<34} {'found (severity)':<60} verdict")
false_findings, hits = [], 0
for line in cases:
    name, expected, args = line.split("|")
    report = json.loads((out / f"{name}.json").read_text())["runs"][0]
    found = [(f["rule"], f["severity"]) for f in report["findings"]]
    shown = ", ".join(f"{r} ({s})" for r, s in found) or "-"
    if expected == "healthy":
        bad = [(r, s) for r, s in found if s in ("problem", "warning")]
        ok = not bad
        false_findings += [f"{name}: {r} ({s})" for r, s in bad]
    else:  # "rule" at any severity (a note counts: few_episodes is one), or "rule:severity"
        ok = any(f"{r}:{s}" in expected.split() or r in expected.split() for r, s in found)
    hits += ok
    print(f"{name:<22} {expected:<34} {shown:<60} {'found' if ok else 'MISSED'}")
print(f"\n{hits} of {len(cases)} cases read as expected")
print("false findings on healthy runs: " + ("; ".join(false_findings) if false_findings else "none"))
EOF
