#!/usr/bin/env bash
# Shared launcher behind run_dataset_generalize_preextracted*.sh and
# run_dataset_generalize_linear_finetuning_onnxruntime.sh: loops over checkpoints and seeds.
# Usage (from a run_*.sh): launch_linear GPU DATASET DATA_PATH [extra finetune_pre_extracted_features.py flags...]
# Environment overrides:
#   CHECKPOINTS_FILE a file with one checkpoint per line ("path" or "path:flavour"; spaces allowed)
#   CHECKPOINTS      space-separated checkpoint files, each optionally "path:flavour"
#   CKPT_DIR         directory scanned (symlinks followed) when neither is set
#   SEEDS            space-separated seeds (default: "21 51 81 111 141")
#   SOLVER           lbfgs (default), sklearn, or sgd (the study's 150-epoch SGD protocol)
#   TRAINING_CONFIG  the sgd solver's trainer config (default: configs/trainers/study_linear_sgd.yaml)
#   EXPERIMENT_ROOT  where run directories and results.csv go (default: experiments/linear)
#   FEATURES_CACHE   where extracted features are cached (default: features_cache)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch_linear() {
  local gpu=$1 dset=$2 data=$3
  shift 3
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  local python=${PYTHON:-$here/.venv/bin/python}
  local seeds=${SEEDS:-"21 51 81 111 141"}
  local solver=${SOLVER:-lbfgs}
  local trainer=${TRAINING_CONFIG:-$here/configs/trainers/study_linear_sgd.yaml}
  local root=${EXPERIMENT_ROOT:-experiments/linear}
  local cache=${FEATURES_CACHE:-features_cache}
  local checkpoints
  checkpoints=$(list_checkpoints) || exit 2
  local gpu_flags data_flag=()
  read -ra gpu_flags <<< "$(device_flags "$gpu")"
  [[ "$data" == "-" ]] || data_flag=(--dataset_path "$data")   # "-": a dataset that needs no files (digits, synthetic)
  run_linear_one() {  # CHECKPOINT FLAVOUR SEED
    "$python" "$here/finetune_pre_extracted_features.py" --dataset "$dset" ${data_flag[@]+"${data_flag[@]}"} \
      --from_checkpoint_path "$1" ${2:+--checkpoint_flavour "$2"} --solver "$solver" \
      --training_config_path "$trainer" --features_cache "$cache" --seed "$3" \
      --experiment_root_path "$root" --resume "${gpu_flags[@]}" "${extra[@]}"
  }
  local extra=("$@")
  run_grid run_linear_one "$checkpoints" "$seeds" "$root/results.csv"
}
