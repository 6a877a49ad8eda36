#!/usr/bin/env bash
# Shared launcher behind run_dataset_generalize_full_training*.sh: loops over checkpoints and seeds.
# Usage (from a run_*.sh): launch_full_finetuning TRAINER_CONFIG GPU DATASET DATA_PATH [extra main.py flags...]
# Environment overrides:
#   CHECKPOINTS_FILE  a file with one checkpoint per line ("path" or "path:flavour"; spaces allowed)
#   CHECKPOINTS  space-separated checkpoint files, each optionally "path:flavour"
#   CKPT_DIR     directory scanned (symlinks followed) when neither is set
#   SEEDS        space-separated seeds (default: "21 23 25")
#   EXPERIMENT_ROOT  where run directories and results.csv go (default: experiments/full)
#   TRANSFER_CONFIG  transfer config (default: configs/transfer/full_finetuning.yaml)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

launch_full_finetuning() {
  local trainer=$1 gpu=$2 dset=$3 data=$4
  shift 4
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  local python=${PYTHON:-$here/.venv/bin/python}
  local seeds=${SEEDS:-"21 23 25"}
  local root=${EXPERIMENT_ROOT:-experiments/full}
  local transfer=${TRANSFER_CONFIG:-$here/configs/transfer/full_finetuning.yaml}
  local checkpoints
  checkpoints=$(list_checkpoints) || exit 2
  local gpu_flags data_flag=()
  read -ra gpu_flags <<< "$(device_flags "$gpu")"
  [[ "$data" == "-" ]] || data_flag=(--dset_path "$data")   # "-": a dataset that needs no files (digits, synthetic)
  run_full_one() {  # CHECKPOINT FLAVOUR SEED
    "$python" "$here/main.py" --dset "$dset" ${data_flag[@]+"${data_flag[@]}"} --config_path "$trainer" \
      --transfer_config_path "$transfer" --from_checkpoint_path "$1" ${2:+--checkpoint_flavour "$2"} \
      --manual_seed "$3" --experiment_root_path "$root" \
      --exp_name "${dset}_$(basename "${1%.*}")_seed${3}" --resume "${gpu_flags[@]}" "${extra[@]}"
  }
  local extra=("$@")
  run_grid run_full_one "$checkpoints" "$seeds" "$root/results.csv"
}
