#!/usr/bin/env bash
# Run a command beside a CPU training run without stalling it: the run drops to one torch
# thread while the command runs with one (OMP_NUM_THREADS=1), and goes back when it ends.
#   bash scripts/beside_training.sh RUN_DIR CMD [ARGS...]
#   bash scripts/beside_training.sh runs/cef7 python -m pytest -q tests/test_tensor_train.py
# RUN_DIR is the training's --out folder; the run reads RUN_DIR/threads at every log step
# (napari_ois.training.loop.THREADS_FILE; docs/training.md, "Sharing the CPU").
set -uo pipefail
run=${1:?usage: beside_training.sh RUN_DIR CMD [ARGS...]}
shift
[ $# -gt 0 ] || { echo "usage: beside_training.sh RUN_DIR CMD [ARGS...]" >&2; exit 2; }
[ -d "$run" ] || { echo "beside_training.sh: $run is not a training run's folder" >&2; exit 2; }
echo $$ > "$run/threads.owner"  # if this script is killed (even -9), the run ignores the request
echo 1 > "$run/threads"
trap 'rm -f "$run/threads" "$run/threads.owner"' EXIT
sleep "${BESIDE_TRAINING_WAIT:-10}"  # the run switches at its next log step
OMP_NUM_THREADS=1 "$@"
