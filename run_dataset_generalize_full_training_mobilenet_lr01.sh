#!/usr/bin/env bash
# Full fine-tuning of MobileNetV1 checkpoints, lr 0.01 for aircraft and cars.
# Usage: ./run_dataset_generalize_full_training_mobilenet_lr01.sh GPU DATASET DATA_PATH [extra main.py flags]   (GPU: an id such as 0, or "cpu"; DATA_PATH "-" for digits, synthetic)
# Checkpoints: CHECKPOINTS="a.pth b.pth:flavour", CHECKPOINTS_FILE=list.txt (one per line) or CKPT_DIR=checkpoints/mobilenet; seeds: SEEDS="21 23 25".
set -euo pipefail
source "$(dirname "$0")/utils/launch/full_finetuning.sh"
[[ $# -ge 3 ]] || { sed -n '2,4p' "$0" >&2; exit 2; }
CKPT_DIR=${CKPT_DIR:-checkpoints/mobilenet} launch_full_finetuning "$(dirname "$0")/configs/trainers/study_full_lr01.yaml" "$@"
