#!/usr/bin/env bash
# Linear fine-tuning with augmentation through the frozen backbone run by ONNX Runtime on the CPU (the study's
# DeepSparse variant): every epoch, augmented training images -> backbone (onnxruntime) -> SGD step on the head.
# Usage: ./run_dataset_generalize_linear_finetuning_onnxruntime.sh DATASET DATA_PATH [extra finetune_pre_extracted_features.py flags]
# Checkpoints: CHECKPOINTS="a.pth b.pth:flavour", CHECKPOINTS_FILE=list.txt (one per line) or CKPT_DIR=checkpoints/resnet50; seeds: SEEDS="21 51 81 111 141".
set -euo pipefail
source "$(dirname "$0")/utils/launch/linear.sh"
[[ $# -ge 2 ]] || { sed -n '4,5p' "$0" >&2; exit 2; }
CKPT_DIR=${CKPT_DIR:-checkpoints/resnet50} SOLVER=sgd EXPERIMENT_ROOT=${EXPERIMENT_ROOT:-experiments/linear_onnxruntime} \
  launch_linear cpu "$@" --augment --feature_backend onnxruntime
