#!/usr/bin/env bash
# Baseline entries of the v2 CPU tracks: `none` first, then every built-in defense at two or more strengths.
# Resumable: a finished entry is skipped (--skip-existing) and an interrupted one resumes from its per-victim
# records (runs/leaderboard/). Run from the repository root, one process at a time:
#   nohup nice -n 5 bash leaderboards/v2/baselines.sh > /tmp/baselines-v2.log 2>&1 &
# Cost, one thread on an idle core: about 1 hour per 64-victim entry of the honest-server tracks without a
# defense (DLG 300 L-BFGS steps 44 s and Inverting Gradients 4000 steps 14 s per victim), up to twice that where
# DLG cannot converge, plus 3 minutes of FedSGD: days for all (leaderboards/README.md, "From v1 to v2").
# natural-convnet5-trained@2 costs the same plus 21 s to train its model once (cached); natural-imprint@2
# (closed-form imprint, 36 victims) about 2-3 minutes per entry, almost all FedSGD, so it runs first.
# A failed submission is logged and the script goes on; re-run it to retry.
set -uo pipefail
DGLBENCH=${DGLBENCH:-.venv/bin/dglbench}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# one track's whole table before the next, the cheap malicious-server track first
TRACKS=${TRACKS:-"natural-imprint@2 natural-convnet5@2 faces-convnet5@2 natural-convnet5-trained@2"}
submit() {
  "$DGLBENCH" leaderboard submit --skip-existing --track "$track" "$@" || echo "FAILED: $track $*" >&2
}

for track in $TRACKS; do
submit --defense none
submit --defense gaussian --param sigma=0.01
submit --defense gaussian --param sigma=0.1
submit --defense laplace --param scale=0.01
submit --defense laplace --param scale=0.1
submit --defense dp_sgd --param clip=1.0 --param sigma=0.1
submit --defense dp_sgd --param clip=1.0 --param sigma=1.0
submit --defense pruning --param ratio=0.5
submit --defense pruning --param ratio=0.9
submit --defense pruning --param ratio=0.99
submit --defense topk --param ratio=0.1
submit --defense topk --param ratio=0.01
submit --defense quantization --param bits=8
submit --defense quantization --param bits=2
submit --defense soteria --param ratio=0.5
submit --defense soteria --param ratio=0.9
submit --defense eigen_noise --param scale=0.01
submit --defense eigen_noise --param scale=0.1
done

"$DGLBENCH" leaderboard validate
"$DGLBENCH" leaderboard render --repo-root .
