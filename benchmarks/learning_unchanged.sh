#!/usr/bin/env bash
# Learning unchanged by speed work: train Hopper with the code of BASE (a commit) and of the
# working tree, same seeds and settings, then compare with `ppo plot`.
#
#   bash benchmarks/learning_unchanged.sh 12065b7 [STEPS=200000] [SEEDS=3] [OUT=/tmp/learning_unchanged]
#
# Needs the virtualenv of `make install`. Both runs use the same python and packages.
set -euo pipefail
base=${1:?usage: learning_unchanged.sh BASE_COMMIT [STEPS] [SEEDS] [OUT]}
steps=${2:-200000}
seeds=${3:-3}
out=${4:-/tmp/learning_unchanged}
root=$(cd "$(dirname "$0")/.." && pwd)
python=$root/.venv/bin/python
tree=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tree"' EXIT
git -C "$root" worktree add -q --detach "$tree" "$base"
rm -rf "$out"
common=(train Hopper-v4 --total-steps "$steps" --seeds "$seeds" --jobs 2 --out "$out" --quiet)
(cd "$tree" && PYTHONPATH="$tree" "$python" -m ppo_cli "${common[@]}" --run-name before)
# the base commit's defaults were the classic settings; today's defaults differ, so name them
(cd "$root" && PYTHONPATH="$root" "$python" -m ppo_cli "${common[@]}" --preset classic --run-name after)
"$python" -m ppo_cli plot "$out" --metrics episodic_return,approx_kl,value_loss
