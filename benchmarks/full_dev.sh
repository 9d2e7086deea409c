#!/usr/bin/env bash
# The ship evaluation of issue 36 (docs/benchmarks.md "Current model and dev-set table"): the
# 11 whole dev sets (napari-ois eval, --stop-iou 0.9) and the two eval3d dev sets, in two
# one-thread lanes balanced by their usual time (about 35 minutes in all on 2 cores).
#   bash benchmarks/full_dev.sh MODEL TAG      # e.g. checkpoints/cef15.safetensors cef15
# writes benchmarks/results/full_dev/TAG_SET.json and benchmarks/results/eval3d/TAG_SET.json;
# then: python benchmarks/ship_table.py --old <shipped> --new TAG
set -uo pipefail
export OMP_NUM_THREADS=1 NAPARI_OIS_DATA=${NAPARI_OIS_DATA:-../shared/data}
model=${1:?usage: full_dev.sh MODEL TAG}
tag=${2:?usage: full_dev.sh MODEL TAG}
out2=benchmarks/results/full_dev
out3=benchmarks/results/eval3d
mkdir -p "$out2" "$out3"
two_d() {
  for set in "$@"; do
    napari-ois eval --dataset "$set" --model "$model" --device cpu --quiet --stop-iou 0.9 \
        --json "$out2/${tag}_$set.json" | tail -1
  done
}
three_d() {
  set=$1
  napari-ois eval3d --images "$NAPARI_OIS_DATA/eval3d/$set/images" \
      --labels "$NAPARI_OIS_DATA/eval3d/$set/labels" --model "$model" --device cpu --quiet \
      --json "$out3/${tag}_$set.json" | tail -4
}
( two_d SABS_CT_dev ACDC_MR_dev BraTS_dev HC18_dev PH2_dev GrabCut; three_d CHAOS_MR_dev3d ) &
( two_d HE_nuclei_dev COCO_MVal_dev Kvasir_dev CHAOS_MR_dev ISBI_EM_dev; three_d SABS_CT_dev3d ) &
wait
