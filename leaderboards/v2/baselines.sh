#!/usr/bin/env bash
# Baseline entries of the v2 CPU tracks: `none` first, then every built-in defense at two or more strengths.
# Resumable: a finished entry is skipped (--skip-existing) and an interrupted one resumes from its per-victim
# records in $WORK_DIR (default leaderboards/v2/work/, tracked so that the records of an entry in progress can be
# committed and a run can span machines; an entry's folder is removed once the entry has landed). Run from the
# repository root, one process per track (they never share records):
#   TRACKS=faces-convnet5@2 nohup nice -n 5 bash leaderboards/v2/baselines.sh > /tmp/baselines-faces.log 2>&1 &
#   TRACKS=faces-convnet5@2 ORDER=reverse nohup nice -n 5 bash leaderboards/v2/baselines.sh > /tmp/rev.log 2>&1 &
# Cost, one thread on an idle core: about 1 hour per 64-victim entry of the honest-server tracks without a
# defense (DLG 300 L-BFGS steps 44 s and Inverting Gradients 4000 steps 14 s per victim), up to twice that where
# DLG cannot converge, plus 3 minutes of FedSGD: days for all (leaderboards/README.md, "From v1 to v2").
# natural-convnet5-trained@2 costs the same plus 21 s to train its model once (cached); natural-imprint@2 and
# natural-imprint-scaled@2 (closed-form imprint, 36 victims) about 2-3 minutes per entry, almost all FedSGD,
# except Soteria (about 6 h of utility) and eigen_noise (about 40 min); a track that differs from another only on
# the attacker's side (trained state, imprint scale) reuses that track's utility runs from $WORK_DIR/utility/.
# A failed submission is logged and the script goes on; re-run it to retry.
set -uo pipefail
DGLBENCH=${DGLBENCH:-.venv/bin/dglbench}
WORK_DIR=${WORK_DIR:-leaderboards/v2/work}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# one track's whole table before the next; the malicious-server tracks last: what they still lack (Soteria,
# eigen_noise) is their most expensive part (leaderboards/README.md)
TRACKS=${TRACKS:-"natural-convnet5@2 faces-convnet5@2 natural-convnet5-trained@2 natural-imprint@2
natural-imprint-scaled@2"}
child=
# a SIGTERM or Ctrl-C to this script reaches the running submit, which keeps its finished victims and exits
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait; exit 143' TERM INT
submit() {
  "$DGLBENCH" leaderboard submit --skip-existing --work-dir "$WORK_DIR" --track "$track" "$@" &
  child=$!
  wait "$child" || echo "FAILED: $track $*" >&2
  child=
  tidy
}
tidy() {  # an entry that has landed holds its records in its victims file: its work folder goes
  local id=${track%@*} dir
  for dir in "$WORK_DIR/$id"/*/; do
    [ -d "$dir" ] && [ -e "leaderboards/v${track#*@}/entries/$id/$(basename "$dir").json" ] && rm -rf "$dir"
  done
  return 0
}

# the defenses of the v1<->v2 rank table (leaderboards/README.md) first, then the rest
DEFENSES="
--defense none
--defense gaussian --param sigma=0.01
--defense laplace --param scale=0.01
--defense dp_sgd --param clip=1.0 --param sigma=0.1
--defense quantization --param bits=2
--defense pruning --param ratio=0.5
--defense soteria --param ratio=0.9
--defense soteria --param ratio=0.5
--defense gaussian --param sigma=0.1
--defense laplace --param scale=0.1
--defense dp_sgd --param clip=1.0 --param sigma=1.0
--defense pruning --param ratio=0.9
--defense pruning --param ratio=0.99
--defense topk --param ratio=0.1
--defense topk --param ratio=0.01
--defense quantization --param bits=8
--defense eigen_noise --param scale=0.01
--defense eigen_noise --param scale=0.1
"
# ORDER=reverse walks the list from its end: a second process on the same track then meets the first in the
# middle (a lock keeps them off the same entry), which halves the wall time of a track on two cores
for track in $TRACKS; do
  while read -r args; do
    # shellcheck disable=SC2086  # the arguments of one entry, split on spaces
    [ -n "$args" ] && submit $args < /dev/null
  done < <(if [ "${ORDER:-}" = reverse ]; then tac; else cat; fi <<< "$DEFENSES")
done

"$DGLBENCH" leaderboard validate
"$DGLBENCH" leaderboard render --repo-root .
