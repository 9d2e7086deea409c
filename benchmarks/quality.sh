#!/usr/bin/env bash
# Quality on the dev sets with the papers' protocol (napari-ois eval), for docs/benchmarks.md.
#   bash benchmarks/quality.sh MODEL [LIMIT] [OUTDIR] [FIRST_PROMPT]
# MODEL: a registry name, a weights path, or a baseline (random-walker, geodesic).
# LIMIT: objects per set (default: all). Needs ../shared/data (or NAPARI_OIS_DATA).
# FIRST_PROMPT: click (default) or box (the object's box, then the protocol's clicks; models
# with box prompts); box results are written as TAG-box_SET.json.
set -euo pipefail
# One torch thread per process: two evaluations run side by side on a 2-core machine, and
# oversubscribed OpenMP threads spin (a 20 ms click took 0.7 s that way, measured here).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
model=${1:?usage: quality.sh MODEL [LIMIT] [OUTDIR]}
limit=${2:-}
out=${3:-benchmarks/results}
first=${4:-click}
tag=$(basename "$model" | sed 's/\.safetensors$//')
[ "$first" = click ] || tag="$tag-$first"
mkdir -p "$out"
for set in GrabCut COCO_MVal_dev Kvasir_dev PH2_dev HC18_dev ISBI_EM_dev BraTS_dev; do
  napari-ois eval --dataset "$set" --model "$model" --device cpu ${limit:+--limit $limit} \
      --first-prompt "$first" --json "$out/${tag}_${set}.json" --quiet
done
