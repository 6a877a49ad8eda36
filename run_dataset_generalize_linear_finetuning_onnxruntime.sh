#!/usr/bin/env bash
# Linear fine-tuning with augmentation through the frozen backbone run by ONNX Runtime on the CPU (the study's
# DeepSparse variant): every epoch, augmented training images -> backbone (onnxruntime) -> SGD step on the head.
# Usage: ./run_dataset_generalize_linear_finetuning_onnxruntime.sh [GPU] DATASET DATA_PATH [extra finetune_pre_extracted_features.py flags]
#   GPU: where the linear head trains, as the other launchers take it (an id such as 0, or "cpu", the default);
#   the backbone runs in ONNX Runtime on the CPU either way. DATA_PATH "-" for digits, synthetic.
# Checkpoints: CHECKPOINTS="a.pth b.pth:flavour", CHECKPOINTS_FILE=list.txt (one per line) or CKPT_DIR=checkpoints/resnet50; seeds: SEEDS="21 51 81 111 141".
set -euo pipefail
source "$(dirname "$0")/utils/launch/linear.sh"
usage() { sed -n '4,8p' "$0" >&2; exit 2; }
gpu=cpu
if [[ $# -ge 1 && $1 =~ ^(cpu|[0-9]+(,[0-9]+)*)$ ]]; then gpu=$1; shift; fi
[[ $# -ge 2 ]] || usage
CKPT_DIR=${CKPT_DIR:-checkpoints/resnet50} SOLVER=sgd EXPERIMENT_ROOT=${EXPERIMENT_ROOT:-experiments/linear_onnxruntime} \
  launch_linear "$gpu" "$@" --augment --feature_backend onnxruntime
