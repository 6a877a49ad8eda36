#!/usr/bin/env bash
# Linear fine-tuning of ResNet-50 checkpoints on cached, pre-extracted features (frozen backbone).
# Usage: ./run_dataset_generalize_preextracted.sh GPU DATASET DATA_PATH [extra finetune_pre_extracted_features.py flags]   (GPU: an id such as 0, or "cpu"; DATA_PATH "-" for digits, synthetic)
# Checkpoints: CHECKPOINTS="a.pth b.pth:flavour", CHECKPOINTS_FILE=list.txt (one per line) or CKPT_DIR=checkpoints/resnet50; seeds: SEEDS="21 51 81 111 141"; SOLVER=sgd for the study's 150-epoch SGD.
set -euo pipefail
source "$(dirname "$0")/utils/launch/linear.sh"
[[ $# -ge 3 ]] || { sed -n '2,4p' "$0" >&2; exit 2; }
CKPT_DIR=${CKPT_DIR:-checkpoints/resnet50} launch_linear "$@"
