#!/usr/bin/env bash
# Baseline entries of the embedded track: every built-in defense at two or more strengths.
# Every entry under v1/entries/digits-convnet5/ was written by this script (dglbench leaderboard submit);
# re-run it from the repository root to reproduce them (about 15 minutes on a 2-core CPU), then render.
set -euo pipefail
DGLBENCH=${DGLBENCH:-.venv/bin/dglbench}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
submit() { "$DGLBENCH" leaderboard submit --track digits-convnet5@1 "$@"; }

submit --defense none
submit --defense gaussian --param sigma=0.0001
submit --defense gaussian --param sigma=0.001
submit --defense gaussian --param sigma=0.01
submit --defense gaussian --param sigma=1.0
submit --defense laplace --param scale=0.001
submit --defense laplace --param scale=0.01
submit --defense laplace --param scale=0.1
submit --defense dp_sgd --param clip=10.0 --param sigma=0.1
submit --defense dp_sgd --param clip=1.0 --param sigma=1.0
submit --defense pruning --param ratio=0.5
submit --defense pruning --param ratio=0.9
submit --defense pruning --param ratio=0.99
submit --defense topk --param ratio=0.1
submit --defense topk --param ratio=0.01
submit --defense quantization --param bits=8
submit --defense quantization --param bits=2
submit --defense quantization --param bits=1
submit --defense soteria --param ratio=0.5
submit --defense soteria --param ratio=0.9
submit --defense eigen_noise --param scale=0.001
submit --defense eigen_noise --param scale=0.01
submit --defense eigen_noise --param scale=0.01 --param ranks=bottom --param n=1 --param k=8

"$DGLBENCH" leaderboard validate
"$DGLBENCH" leaderboard render
