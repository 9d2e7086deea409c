#!/usr/bin/env bash
# The prepared GPU training command: train the shipped model (a warm restart of ois-tiny-cef,
# configs/gpu-ois-tiny-cef.yaml) from a training pack on a CUDA machine
# in MINUTES (default 9) and leave model.safetensors (+ .json, history.json, log) in OUT.
#   bash scripts/gpu_train.sh PACK OUT [MINUTES] [CONFIG]
# Needs torch and timm there (the device image has them); runs from the source tree
# (PYTHONPATH=src), no install. Build the pack here first (docs/training.md, "The GPU path"):
# napari-ois pack --out runs/pack192.npz --side 192 --quality 72 --scenes 600 --max-per-set 1500
set -euo pipefail
cd "$(dirname "$0")/.."
pack=${1:?usage: gpu_train.sh PACK OUT [MINUTES] [CONFIG]}
out=${2:?usage: gpu_train.sh PACK OUT [MINUTES] [CONFIG]}
minutes=${3:-9}
config=${4:-configs/gpu-ois-tiny-cef.yaml}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
python3 -m napari_ois.training.tensor_train --pack "$pack" --config "$config" --out "$out" \
    --minutes "$minutes" 2>&1 | tee "$out/train.log"
