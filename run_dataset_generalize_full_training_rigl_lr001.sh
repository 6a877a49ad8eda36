#!/usr/bin/env bash
# Full fine-tuning of RigL checkpoints (TensorFlow names, bicubic resize via the rigl_resnet50 flavour), lr 0.001.
# Usage: ./run_dataset_generalize_full_training_rigl_lr001.sh GPU DATASET DATA_PATH [extra main.py flags]   (GPU: an id such as 0, or "cpu"; DATA_PATH "-" for digits, synthetic)
# Checkpoints: CHECKPOINTS="a.pth b.pth:flavour", CHECKPOINTS_FILE=list.txt (one per line) or CKPT_DIR=checkpoints/rigl; seeds: SEEDS="21 23 25".
set -euo pipefail
source "$(dirname "$0")/utils/launch/full_finetuning.sh"
[[ $# -ge 3 ]] || { sed -n '2,4p' "$0" >&2; exit 2; }
CKPT_DIR=${CKPT_DIR:-checkpoints/rigl} launch_full_finetuning "$(dirname "$0")/configs/trainers/study_full_lr001.yaml" "$@" --checkpoint_flavour rigl_resnet50
