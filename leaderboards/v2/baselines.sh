#!/usr/bin/env bash
# Baseline entries of the v2 CPU tracks: `none` first, then every built-in defense at two or more strengths.
# Resumable: a finished entry is skipped (--skip-existing) and an interrupted one resumes from its per-victim
# records (runs/leaderboard/). Run from the repository root, one process at a time:
#   nohup nice -n 5 bash leaderboards/v2/baselines.sh > /tmp/baselines-v2.log 2>&1 &
# Cost measured on a shared 2-core CPU (load ~5): about 3 minutes per victim and entry (DLG 300 L-BFGS steps,
# Inverting Gradients 4000 steps, adaptive attacks, I2F) plus 3 minutes of FedSGD, i.e. about 3 hours per
# 64-victim entry; 2 tracks x 29 entries is several days of such a machine. natural-convnet5-trained@2 costs the
# same plus 21 s to train its model once (cached); natural-imprint@2 (closed-form imprint, 36 victims) about
# 2-3 minutes per entry, almost all FedSGD (measured: none 414 s with the undefended run, gaussian 117-160 s).
# A failed submission is logged and the script goes on; re-run it to retry.
set -uo pipefail
DGLBENCH=${DGLBENCH:-.venv/bin/dglbench}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TRACKS=${TRACKS:-"natural-convnet5@2 faces-convnet5@2 natural-convnet5-trained@2 natural-imprint@2"}
submit() {
  for track in $TRACKS; do
    "$DGLBENCH" leaderboard submit --skip-existing --track "$track" "$@" || echo "FAILED: $track $*" >&2
  done
}

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

"$DGLBENCH" leaderboard validate
"$DGLBENCH" leaderboard render
