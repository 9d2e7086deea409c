#!/usr/bin/env bash
# The fusion study (docs/benchmarks.md): both arms from the shipped default, same data, seed,
# schedule and input size, 40 minutes of wall-clock time each, one after the other (2 threads).
# Then evaluates both on the first 30 objects of every dev set.
#   NAPARI_OIS_DATA=../shared/data bash benchmarks/fusion_study.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-40}
export OMP_NUM_THREADS=2
mkdir -p runs   # both arms start from the default of that time (late fusion), kept in git history
git show 573b7d2:src/napari_ois/weights/ois-tiny-default.safetensors > runs/ois-tiny-v1.safetensors
git show 573b7d2:src/napari_ois/weights/ois-tiny-default.json > runs/ois-tiny-v1.json
napari-ois train --config configs/study-ef-warm.yaml --out runs/study-ef --time-limit-min "$minutes"
napari-ois train --config configs/study-late-warm.yaml --out runs/study-late --time-limit-min "$minutes"
for arm in ef late; do
  bash benchmarks/quality.sh "runs/study-$arm/model.safetensors" 30 "runs/res/$arm"
done
